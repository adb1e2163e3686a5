"""What a compaction did: per layer channel counts and reasons, totals, a JSON summary, a rich table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_shifter.compaction.graph import ChannelGraph
from lightning_shifter.compaction.removal import FOLDED, UNUSED, ZERO, Removal

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class LayerReport:
    """Output channels (features, for linear layers) of one convolution, linear or batch-norm."""

    name: str
    kind: str
    channels_before: int
    channels_after: int
    inputs_before: int
    inputs_after: int
    removed_zero: int
    removed_unused: int
    removed_folded: int
    kept_constant: int
    kept_constant_reason: str | None
    placeholders: int  # removable, kept (zeroed) only so that the layer keeps one channel
    normalization: bool  # a batch-norm: its channels are those of the layer before it


@dataclass
class CompactionReport:
    layers: list[LayerReport]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: float
    max_abs_error: float
    unsupported: list[str]
    iterations: int  # rounds of the fixed point, over every pass
    timings: dict[str, float] = field(default_factory=dict)
    # max |compacted - model| with both run in float64, when float32 rounding alone exceeded the
    # tolerance and the removals were checked in float64 (None: float32 was enough)
    float64_error: float | None = None

    # totals count output channels of convolutions and linear layers (filters and neurons);
    # batch-norm rows repeat the channels of the layer before them
    def _filters(self) -> list[LayerReport]:
        return [layer for layer in self.layers if not layer.normalization]

    @property
    def channels_before(self) -> int:
        return sum(layer.channels_before for layer in self._filters())

    @property
    def channels_after(self) -> int:
        return sum(layer.channels_after for layer in self._filters())

    @property
    def kept_constant(self) -> int:
        return sum(layer.kept_constant for layer in self._filters())

    @property
    def placeholders(self) -> int:
        return sum(layer.placeholders for layer in self._filters())

    def removed(self) -> dict[str, int]:
        """Filters and neurons removed, by reason: ``zero``, ``unused``, ``folded``."""
        layers = self._filters()
        return {
            "zero": sum(layer.removed_zero for layer in layers),
            "unused": sum(layer.removed_unused for layer in layers),
            "folded": sum(layer.removed_folded for layer in layers),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (goes into the portfolio manifest)."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "channels_before": self.channels_before,
            "channels_after": self.channels_after,
            "removed": self.removed(),
            "kept_constant": self.kept_constant,
            "placeholders": self.placeholders,
            "seconds": self.seconds,
            "timings": dict(self.timings),
            "max_abs_error": self.max_abs_error,
            "float64_error": self.float64_error,
            "iterations": self.iterations,
            "unsupported": list(self.unsupported),
            "layers": [asdict(layer) for layer in self.layers],
        }

    def table(self) -> Table:
        """A rich table: one row per layer that changed or kept constant channels, then totals."""
        from rich.table import Table  # only when a table is printed: compacting needs no rich

        table = Table(title=f"compaction: {self.seconds * 1e3:.1f} ms, max error {self.max_abs_error:.2g}")
        for column in ("layer", "kind", "channels", "zero", "unused", "folded", "kept const", "why kept"):
            table.add_column(column, justify="left" if column in ("layer", "kind", "why kept") else "right")
        for layer in self.layers:
            if layer.channels_before == layer.channels_after and not layer.kept_constant:
                continue
            table.add_row(
                layer.name, layer.kind, f"{layer.channels_before} -> {layer.channels_after}",
                str(layer.removed_zero), str(layer.removed_unused), str(layer.removed_folded),
                str(layer.kept_constant), layer.kept_constant_reason or "",
            )
        removed = self.removed()
        table.add_row(
            "total", "", f"{self.channels_before} -> {self.channels_after}", str(removed["zero"]),
            str(removed["unused"]), str(removed["folded"]),
            str(self.kept_constant), "(filters and neurons)", end_section=True,
        )
        table.caption = (
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_before / max(self.params_after, 1):.2f}x), "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_before / max(self.macs_after, 1):.2f}x)"
            + (f"; kept as is: {', '.join(self.unsupported)}" if self.unsupported else "")
        )
        return table

    def __rich__(self) -> Table:
        return self.table()


def layer_reports(graph: ChannelGraph, removal: Removal) -> list[LayerReport]:
    reports = []
    for layer in graph.layers:
        sets = removal.labels[layer.out_ids]
        gone = removal.removed[sets]
        held = removal.placeholder[sets]
        reason = removal.reason[sets]
        kept_constant = ~gone & ~held & removal.constant[sets]
        why = None
        if kept_constant.any():
            blocker = int(removal.blocker[sets[kept_constant][0]])
            why = removal.messages[blocker] if blocker >= 0 else None
        reports.append(
            LayerReport(
                name=str(layer.node.target),
                kind=type(layer.module).__name__,
                channels_before=int(sets.numel()),
                channels_after=int((~gone).sum()),
                inputs_before=int(layer.in_ids.numel()),
                inputs_after=int((~removal.gone(layer.in_ids)).sum()),
                removed_zero=int((gone & (reason == ZERO)).sum()),
                removed_unused=int((gone & (reason == UNUSED)).sum()),
                removed_folded=int((gone & (reason == FOLDED)).sum()),
                kept_constant=int(kept_constant.sum()),
                kept_constant_reason=why,
                placeholders=int(held.sum()),
                normalization=isinstance(layer.module, nn.modules.batchnorm._BatchNorm),
            )
        )
    return reports


def merge_layers(passes: list[list[LayerReport]]) -> list[LayerReport]:
    """One entry per layer over several passes: counts before the first, after the last."""
    merged = []
    for entries in zip(*passes):
        first, last = entries[0], entries[-1]
        merged.append(
            replace(
                last,
                channels_before=first.channels_before,
                inputs_before=first.inputs_before,
                removed_zero=sum(e.removed_zero for e in entries),
                removed_unused=sum(e.removed_unused for e in entries),
                removed_folded=sum(e.removed_folded for e in entries),
            )
        )
    return merged


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_macs(graph: ChannelGraph, meta: dict[fx.Node, Any]) -> int:
    """MACs of the convolutions and linear layers of ``graph`` as they are now, from recorded shapes.

    Each output position of a layer costs one MAC per weight of its output channel, so a layer costs
    ``positions x weight.numel()``: the same count as :func:`count_macs`, without running the model.
    Shapes recorded before a rewrite stay valid after it: removing channels keeps the positions.
    """
    total = 0
    for layer in graph.layers:
        if isinstance(layer.module, nn.modules.batchnorm._BatchNorm):
            continue
        shape = meta[layer.node]
        channel_axis = -1 if isinstance(layer.module, nn.Linear) else 1 - len(shape)  # batched or not
        positions = shape.numel() // shape[channel_axis]
        total += positions * layer.module.weight.numel()
    return total


def count_macs(module: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> int:
    """Multiply-accumulates of one eval-mode forward (convolutions, matrix products) at these inputs.

    Example:
        >>> import torch
        >>> count_macs(torch.nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 10, 10))  # 8 x 8x8 x 3x3x3
        13824
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        for m, training in modes:
            m.training = training
    return counter.get_total_flops() // 2
