"""Pruning criteria: how :class:`~lightning_shifter.imp.IterativeMagnitudePruning` scores weights.

A criterion maps the prunable weights (by parameter name) and the layers that own them (by the same
name) to one non-negative score per weight; the callback then keeps the globally highest-scoring
weights (:func:`lightning_shifter.masks.global_score_masks`: exact counts, ties by position).

* :func:`magnitude`: ``|w|``, DNNShifter's and the lottery-ticket papers' global magnitude pruning,
  the default.
* :class:`ChannelAwareMagnitude`: ``|w|`` scaled by how strong the weight's output filter (and input
  channel) still is within its layer. Weak filters lose their remaining weights first, so whole
  filters, channels and neurons die at higher densities than under plain magnitude, and compaction
  starts to pay in fewer rounds (less training) at the same accuracy.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_shifter.criteria import ChannelAwareMagnitude, magnitude
    >>> layer = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     layer.weight.copy_(torch.tensor([[1.0, 1.0], [0.9, 0.1]]))
    >>> weights, layers = {"w": layer.weight}, {"w": layer}
    >>> magnitude(weights, layers)["w"]
    tensor([[1.0000, 1.0000],
            [0.9000, 0.1000]])
    >>> ChannelAwareMagnitude(alpha=2.0, inputs=False)(weights, layers)["w"].argmin(dim=1)  # row 1 is weaker
    tensor([0, 1])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from lightning_shifter.masks import input_channel_view, output_channel_view

__all__ = ["ChannelAwareMagnitude", "Criterion", "magnitude", "describe"]

#: ``criterion(weights, layers) -> scores``: same keys as ``weights``, scores shaped like each weight,
#: non-negative; a weight that is exactly zero must score 0.
Criterion = Callable[[Mapping[str, Tensor], Mapping[str, nn.Module]], dict[str, Tensor]]


@torch.no_grad()
def magnitude(weights: Mapping[str, Tensor], layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """``|w|``: global magnitude pruning, as in DNNShifter (the default criterion)."""
    return {name: w.detach().abs().to(torch.float32) for name, w in weights.items()}


def _relative_norms(rows: Tensor) -> Tensor:
    """L2 norm of each row divided by the mean norm of the rows that still have any weight (1 if none)."""
    norms = rows.pow(2).sum(dim=1).sqrt()
    alive = norms > 0
    if not bool(alive.any()):
        return torch.ones_like(norms)
    return norms / norms[alive].mean()


@dataclasses.dataclass(frozen=True)
class ChannelAwareMagnitude:
    r"""Score ``|w| * (f_o / mean f) ** alpha * (c_i / mean c) ** alpha`` for weight ``w`` of output
    filter ``o`` and input channel ``i`` of its layer.

    ``f_o`` is the L2 norm of the surviving weights of filter (neuron) ``o``, ``c_i`` that of input
    channel ``i`` (over all filters of the layer), and the means run over the filters / channels of
    the same layer that still have weights. Within one filter the magnitude order is unchanged; a
    filter weaker than its layer's average loses its weights sooner, until it is empty and
    compaction removes it (and likewise for input channels, which compaction removes as *unused*).
    A layer whose filters are all alike scores like plain magnitude, so the global balance between
    layers stays that of magnitude pruning. ``alpha=0`` is plain magnitude.

    Args:
        alpha: strength of the structural push, >= 0. Larger values empty whole filters sooner; 2 to 4
            measured well on real runs (README, "Real runs"), 3 is the default.
        inputs: also scale by the input channel's strength (channels read by no filter become
            removable), not only by the output filter's.
    """

    alpha: float = 3.0
    inputs: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0 <= self.alpha < 1e3:
            raise ValueError(f"alpha must be a number >= 0 (0 is plain magnitude), got {self.alpha!r}")

    @torch.no_grad()
    def __call__(self, weights: Mapping[str, Tensor], layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
        scores = {}
        for name, weight in weights.items():
            layer = layers[name]
            w = weight.detach().to(torch.float32)
            score = w.abs()
            if self.alpha:
                rows = output_channel_view(layer, w)
                factor = _relative_norms(rows).pow(self.alpha)
                scaled = output_channel_view(layer, score) * factor[:, None]
                score = _from_output_channel_view(layer, scaled, w.shape)
                if self.inputs:
                    columns = input_channel_view(layer, w)
                    factor = _relative_norms(columns).pow(self.alpha)
                    scaled = input_channel_view(layer, score) * factor[:, None]
                    score = _from_input_channel_view(layer, scaled, w.shape)
            scores[name] = score
        return scores


def _from_output_channel_view(layer: nn.Module, rows: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`~lightning_shifter.masks.output_channel_view`."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        groups = layer.groups
        in_channels, out_per_group = shape[:2]
        grouped = rows.reshape(groups, out_per_group, in_channels // groups, -1).transpose(1, 2)
        return grouped.reshape(shape)
    return rows.reshape(shape)


def _from_input_channel_view(layer: nn.Module, columns: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of :func:`~lightning_shifter.masks.input_channel_view`."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return columns.reshape(shape)
    groups = getattr(layer, "groups", 1)
    out_channels, in_per_group = shape[:2]
    grouped = columns.reshape(groups, in_per_group, out_channels // groups, -1).transpose(1, 2)
    return grouped.reshape(shape)


def describe(criterion: Criterion) -> str:
    """A stable description of ``criterion``, stored in checkpoints to check a resume uses the same one."""
    if criterion is magnitude:
        return "magnitude"
    if dataclasses.is_dataclass(criterion):
        return repr(criterion)
    return getattr(criterion, "__qualname__", type(criterion).__qualname__)
