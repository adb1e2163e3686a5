"""Pure tensor functions for unstructured magnitude pruning (no Lightning import).

* :func:`prunable_weights` selects the weights to score (every ``Conv*d`` and ``Linear`` by default);
* :func:`global_magnitude_masks` keeps exactly ``keep`` weights over all of them, deterministically;
* :func:`apply_masks_` zeroes the pruned entries in place (one fused ``_foreach_mul_``);
* :func:`dead_output_channels`, :func:`record_norm_successors` and :func:`norm_affine_masks` find
  filters / neurons that are entirely pruned and mask the affine of the norm layer that reads them,
  so such channels output exact zeros and compaction can remove them.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_shifter.masks import prunable_weights, global_magnitude_masks, apply_masks_, density
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> weights = prunable_weights(model)
    >>> list(weights)
    ['0.weight', '2.weight']
    >>> masks = global_magnitude_masks(weights, keep=24)
    >>> apply_masks_(list(weights.values()), [m.to(torch.float32) for m in masks.values()])
    >>> density(weights.values())
    0.5
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

#: Module types whose ``weight`` is scored by default.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)

#: Norm layers whose affine maps a zero channel to exactly its shift, channel by channel: masking
#: their weight and bias makes a dead input channel an exact zero. (LayerNorm and GroupNorm mix
#: channels, so a zero input channel does not give a zero output: they are left alone.)
PER_CHANNEL_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)

ModuleSelector = type[nn.Module] | str


def _matches(name: str, module: nn.Module, selectors: Iterable[ModuleSelector]) -> bool:
    for selector in selectors:
        if isinstance(selector, str):
            if fnmatch.fnmatchcase(name, selector):
                return True
        elif isinstance(module, selector):
            return True
    return False


def _check_selectors(selectors: Sequence[ModuleSelector], argument: str) -> None:
    for selector in selectors:
        if not (isinstance(selector, str) or (isinstance(selector, type) and issubclass(selector, nn.Module))):
            raise TypeError(
                f"{argument} entries must be nn.Module subclasses or module-name patterns such as "
                f"'features.*', got {selector!r}"
            )


def prunable_weights(
    model: nn.Module,
    include: Sequence[ModuleSelector] = DEFAULT_PRUNABLE_TYPES,
    exclude: Sequence[ModuleSelector] = (),
) -> dict[str, nn.Parameter]:
    """Weights to score, keyed by parameter name (``"<module>.weight"``), in registration order.

    A module is selected when it matches an ``include`` entry and no ``exclude`` entry; an entry is a
    module type (``isinstance``) or an ``fnmatch`` pattern over the module's qualified name. Only a
    ``weight`` parameter with two or more dimensions is scored, so biases and norm layers never are.
    A weight shared by several modules is listed once. A name pattern that matches no module raises
    ``ValueError``, since it is almost certainly a typo.
    """
    _check_selectors(include, "include")
    _check_selectors(exclude, "exclude")
    named = list(model.named_modules())
    for argument, selectors in (("include", include), ("exclude", exclude)):
        for pattern in (s for s in selectors if isinstance(s, str)):
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
                raise ValueError(
                    f"{argument} pattern {pattern!r} matches no module of {type(model).__name__}; "
                    f"module names look like {[name for name, _ in named[1:4]]}"
                )
    selected: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, module in named:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2 or id(weight) in seen:
            continue
        if _matches(name, module, include) and not _matches(name, module, exclude):
            selected[f"{name}.weight" if name else "weight"] = weight
            seen.add(id(weight))
    return selected


def keep_count(total: int, target_density: float) -> int:
    """Number of weights that survive at ``target_density``: ``round(total * target_density)``."""
    return int(round(total * target_density))


@torch.no_grad()
def global_magnitude_masks(
    weights: Mapping[str, Tensor], keep: int, masks: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Boolean masks keeping exactly ``keep`` of the given weights, largest magnitude first.

    :func:`global_score_masks` with ``|w|`` as the score: global, deterministic, already-pruned
    entries go first and never come back, ties are broken by position.
    """
    return global_score_masks({n: w.detach().abs() for n, w in weights.items()}, keep, masks)


@torch.no_grad()
def global_score_masks(
    scores: Mapping[str, Tensor], keep: int, masks: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Boolean masks keeping exactly ``keep`` entries over all ``scores``, highest score first.

    The rule is global and deterministic: scores are compared over the concatenation of all tensors
    in the mapping's order, entries already pruned by ``masks`` score -1 (so they are pruned first
    and never come back), and ties are broken by position (a stable sort keeps the earlier entry).
    Scores must be non-negative; zero-score entries that are not masked go right after the masked
    ones.
    """
    if not scores:
        raise ValueError("no weights to prune: the selection of prunable weights is empty")
    names = list(scores)
    flat = [scores[n].detach().reshape(-1).to(torch.float32) for n in names]
    if masks is not None:
        flat = [torch.where(masks[n].reshape(-1).to(f.device), f, -1.0) for n, f in zip(names, flat)]
    sizes = [f.numel() for f in flat]
    total = sum(sizes)
    if not 0 <= keep <= total:
        raise ValueError(f"keep must be in [0, {total}], got {keep}")
    flat_scores = torch.cat([f.to(flat[0].device) for f in flat])
    order = torch.sort(flat_scores, descending=True, stable=True).indices
    kept = torch.zeros(total, dtype=torch.bool, device=flat_scores.device)
    kept[order[:keep]] = True
    return {
        n: part.reshape(scores[n].shape).to(scores[n].device)
        for n, part in zip(names, torch.split(kept, sizes))
    }


@torch.no_grad()
def apply_masks_(params: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """Multiply each parameter in place by its mask (same dtype and device): one fused call.

    This is the hot-path operation, run after every optimizer step; keep ``masks`` pre-converted.
    """
    if params:
        torch._foreach_mul_(list(params), list(masks))


@torch.no_grad()
def density(tensors: Iterable[Tensor]) -> float:
    """Fraction of nonzero entries over all the given tensors."""
    nonzero = total = 0
    for t in tensors:
        nonzero += int(torch.count_nonzero(t))
        total += t.numel()
    if total == 0:
        raise ValueError("density of an empty set of tensors is undefined")
    return nonzero / total


def output_channel_view(module: nn.Module, tensor: Tensor) -> Tensor:
    """``tensor`` (shaped like ``module.weight``) as ``(out_channels, -1)``.

    ``Conv*d`` and ``Linear`` weights start with the output dimension; ``ConvTranspose*d`` weights are
    ``(in, out / groups, *kernel)`` and are regrouped so that row ``o`` holds output channel ``o``.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        groups = module.groups
        in_channels, out_per_group = tensor.shape[:2]
        grouped = tensor.reshape(groups, in_channels // groups, out_per_group, -1)
        return grouped.transpose(1, 2).reshape(groups * out_per_group, -1)
    return tensor.reshape(tensor.shape[0], -1)


def input_channel_view(module: nn.Module, tensor: Tensor) -> Tensor:
    """``tensor`` (shaped like ``module.weight``) as ``(in_channels, -1)``: row ``i`` holds every
    weight that reads input channel ``i`` (for grouped convolutions, of the group that reads it)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return tensor.reshape(tensor.shape[0], -1)
    groups = getattr(module, "groups", 1)
    out_channels, in_per_group = tensor.shape[:2]
    grouped = tensor.reshape(groups, out_channels // groups, in_per_group, -1)
    return grouped.transpose(1, 2).reshape(groups * in_per_group, -1)


@torch.no_grad()
def dead_output_channels(module: nn.Module, weight_mask: Tensor) -> Tensor:
    """Boolean per output channel: True when every weight feeding that channel is pruned."""
    return ~output_channel_view(module, weight_mask).any(dim=1)


@contextmanager
def record_norm_successors(model: nn.Module, layer_names: Iterable[str]) -> Iterator[dict[str, set[str] | None]]:
    """Find, from a real forward pass, which per-channel norm layer reads which layer's output.

    Inside the ``with`` block, run one forward of ``model``. The yielded dict then maps the name of
    every per-channel norm layer (:data:`PER_CHANNEL_NORM_TYPES`, with affine) that ran to the set of
    layer names whose output object it received as input, or to ``None`` when it received anything
    else at least once (such a norm must never be masked). Pairing is by tensor identity, so it does
    not depend on module registration order; hooks are removed when the block exits.
    """
    modules = dict(model.named_modules())
    # id(output) -> (layer, output, version at production): holding the output keeps its id unique,
    # and the version counter tells whether an in-place op changed it before the norm read it
    produced: dict[int, tuple[str, Tensor, int]] = {}
    sources: dict[str, set[str] | None] = {}
    handles = []

    def remember_output(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor):
                produced[id(output)] = (name, output, output._version)

        return hook

    def pair_input(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            entry = produced.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
            if entry is None or entry[1] is not args[0] or entry[2] != args[0]._version:
                sources[name] = None
            elif name not in sources or sources[name] is not None:
                sources.setdefault(name, set()).add(entry[0])

        return hook

    try:
        for name in layer_names:
            handles.append(modules[name].register_forward_hook(remember_output(name)))
        for name, module in modules.items():
            if isinstance(module, PER_CHANNEL_NORM_TYPES) and module.affine:
                handles.append(module.register_forward_pre_hook(pair_input(name)))
        yield sources
    finally:
        for handle in handles:
            handle.remove()
        produced.clear()


def norm_pairs(sources: Mapping[str, set[str] | None]) -> list[list[str]]:
    """Flatten :func:`record_norm_successors`' result to sorted ``[layer, norm]`` pairs (a norm fed by
    anything but a prunable layer is dropped)."""
    return sorted([layer, norm] for norm, layers in sources.items() if layers is not None for layer in layers)


@torch.no_grad()
def norm_affine_masks(
    model: nn.Module, pairs: Sequence[Sequence[str]], weight_masks: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Masks for the ``weight`` and ``bias`` of every norm layer in ``pairs``.

    A norm channel is masked (False) when it is dead in every layer that feeds the norm, so the
    channel's output is exactly zero instead of the norm's shift. A norm with any feeding layer that
    has no mask or a different channel count is left alone. Keys are parameter names, e.g.
    ``"bn1.weight"`` and ``"bn1.bias"``.
    """
    modules = dict(model.named_modules())
    alive: dict[str, Tensor | None] = {}
    for layer_name, norm_name in pairs:
        layer, norm = modules[layer_name], modules[norm_name]
        mask = weight_masks.get(f"{layer_name}.weight")
        layer_alive = None if mask is None else ~dead_output_channels(layer, mask).to(norm.weight.device)
        if layer_alive is None or layer_alive.numel() != norm.num_features:
            alive[norm_name] = None
        elif norm_name not in alive:
            alive[norm_name] = layer_alive
        elif alive[norm_name] is not None:
            alive[norm_name] = alive[norm_name] | layer_alive
    result: dict[str, Tensor] = {}
    for norm_name, channel_alive in alive.items():
        if channel_alive is None:
            continue
        for param in ("weight", "bias"):
            if getattr(modules[norm_name], param, None) is not None:
                result[f"{norm_name}.{param}"] = channel_alive.clone()
    return result
