"""Exactness check of a compacted model, and locating the first diverging layer when it fails."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, fx
from torch.utils._pytree import tree_flatten

from lightning_shifter.compaction.graph import ChannelGraph
from lightning_shifter.compaction.removal import Removal


def random_like(inputs: tuple[Tensor, ...], seed: int) -> tuple[Tensor, ...]:
    """Inputs of the same shapes and dtypes: normal floats, integers within the example's range."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        if x.is_floating_point():
            out.append(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
        elif x.dtype == torch.bool or x.numel() == 0:
            out.append(x.clone())
        else:
            low, high = int(x.min()), int(x.max()) + 1
            out.append(torch.randint(low, high, x.shape, generator=generator, dtype=x.dtype).to(x.device))
    return tuple(out)


def leaves(output: Any) -> list[Tensor]:
    return [t for t in tree_flatten(output)[0] if isinstance(t, Tensor)]


def to_float64(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Floating-point inputs in float64, the others as they are."""
    return tuple(x.double() if x.is_floating_point() else x for x in inputs)


def error(reference: list[Tensor], result: list[Tensor]) -> tuple[float, float]:
    """(max |result - reference|, the allowed error ``tolerance`` multiplies).

    A NaN or an infinity equals only itself at the same position: anywhere else the error is
    infinite. The scale is ``max(1, max |reference|)`` over the finite values.
    """
    if len(reference) != len(result) or any(a.shape != b.shape for a, b in zip(reference, result)):
        return float("inf"), 1.0
    worst, scale = 0.0, 1.0
    for a, b in zip(reference, result):
        if a.numel() == 0:
            continue
        a64, b64 = a.detach().double(), b.detach().double()
        finite = torch.isfinite(a64)
        same_special = (a64 == b64) | (torch.isnan(a64) & torch.isnan(b64))
        if not bool((finite | same_special).all()) or not bool(torch.isfinite(b64[finite]).all()):
            return float("inf"), scale
        if bool(finite.any()):
            worst = max(worst, float((a64[finite] - b64[finite]).abs().max()))
            scale = max(scale, float(a64[finite].abs().max()))
    return worst, scale


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.results: dict[str, Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.results[n.name] = result.detach().clone()  # later in-place ops must not change it
        return result


def first_divergence(
    original: fx.GraphModule,
    compacted: fx.GraphModule,
    passes: list[tuple[ChannelGraph, Removal]],
    inputs: tuple[Tensor, ...],
    tolerance: float,
) -> str:
    """Name of the first node whose surviving channels differ beyond ``tolerance``."""
    before, after = _Recorder(original), _Recorder(compacted)
    with torch.no_grad():  # each on its own copy of the inputs: a model may change them in place
        before.run(*(x.clone() for x in inputs))
        after.run(*(x.clone() for x in inputs))
    for node in compacted.graph.nodes:
        a, b = before.results.get(node.name), after.results.get(node.name)
        if a is None or b is None:
            continue
        origin, axis = _surviving(node.name, passes)
        if origin is not None:
            axis += a.dim()
            if b.shape[axis] != origin.numel():
                return _describe(node, f"has {b.shape[axis]} channels, expected {origin.numel()}")
            real = origin >= 0  # placeholders (-1) hold no original channel
            a = a.index_select(axis, origin[real])
            b = b.index_select(axis, real.nonzero().flatten())
        worst, scale = error([a], [b])
        if worst > tolerance * scale:
            return _describe(node, f"differs by {worst:.3g} (allowed {tolerance * scale:.3g})")
    return "no single layer (only the final outputs differ)"


def _surviving(name: str, passes: list[tuple[ChannelGraph, Removal]]) -> tuple[Tensor | None, int]:
    """For each channel of node ``name`` after every pass, its original index (-1: placeholder)."""
    origin, axis = None, 0
    for graph, removal in passes:
        channels = next((c for n, c in graph.values.items() if n.name == name), None)
        if channels is None:
            return None, 0
        if origin is None:
            origin, axis = torch.arange(channels.ids.numel()), channels.axis
        kept = ~removal.gone(channels.ids)
        origin = origin[kept].clone()
        origin[removal.held(channels.ids)[kept]] = -1
    return origin, axis


def _describe(node: fx.Node, what: str) -> str:
    where = f"module '{node.target}'" if node.op == "call_module" else f"op '{node.name}'"
    return f"{where} (graph node '{node.name}') {what}"
