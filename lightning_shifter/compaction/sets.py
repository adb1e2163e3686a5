"""Which channels of different layers compaction can only remove together.

The channel analysis (:mod:`.graph`) unites channels that must go together: the outputs of layers
summed by a residual connection, the inputs and outputs of one group of a grouped convolution, the
channels an elementwise product pairs. :func:`channel_sets` exposes that union per layer, so that a
pruning criterion can weaken a whole set at once (a residual stream's channel only disappears when
every layer that writes it has lost that filter).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lightning_shifter.compaction.removal import components


@dataclass(frozen=True)
class LayerChannelSets:
    """The channel set of each output and input channel of one layer (same label: same set)."""

    outputs: Tensor  # int64 [out_channels]
    inputs: Tensor  # int64 [in_channels]


def channel_sets(model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> dict[str, LayerChannelSets]:
    """For every convolution (``groups == 1``) and linear layer that ``model`` calls exactly once, by
    module name, the channel set of each of its output and input channels.

    Labels are comparable across layers: two channels with the same label are removed together or
    not at all. Only structure counts (which ops connect which channels), not the current weights,
    so the result is the same at every pruning round. ``model`` is not modified.

    Raises:
        CompactionError: when ``model`` cannot be traced or fails on ``example_inputs`` (as
            :func:`~lightning_shifter.compaction.compact` would).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> class Residual(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.stem, self.branch = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        ...     def forward(self, x):
        ...         x = self.stem(x)
        ...         return x + self.branch(x)
        >>> sets = channel_sets(Residual(), torch.randn(1, 1, 8, 8))
        >>> torch.equal(sets["stem"].outputs, sets["branch"].outputs)  # the add couples them
        True
    """
    # imported here: the package's __init__ imports this module
    from lightning_shifter.compaction import _analyse, _as_inputs, _record, _trace, _working_copy

    inputs = _as_inputs(example_inputs, "example_inputs")
    gm = _trace(_working_copy(model))
    meta, _ = _record(gm, inputs)
    graph = _analyse(gm, meta)
    labels = components(graph)
    calls: dict[str, int] = {}
    for layer in graph.layers:
        if layer.node.op == "call_module":
            calls[layer.node.target] = calls.get(layer.node.target, 0) + 1
    sets = {}
    for layer in graph.layers:
        name = layer.node.target
        if (layer.node.op != "call_module" or calls[name] != 1 or layer.groups != 1
                or not isinstance(layer.module, (nn.Linear, nn.modules.conv._ConvNd)) or layer.in_ids is None):
            continue
        sets[name] = LayerChannelSets(outputs=labels[layer.out_ids], inputs=labels[layer.in_ids])
    return sets
