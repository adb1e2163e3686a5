"""The original DNNShifter compaction rule, re-stated to compare against: smaller gains, and not exact.

DNNShifter (Eccles et al., 2023) compacts a sparse VGG by fusing every batch-norm into the
convolution before it and then, in one pass, dropping each filter (each neuron of a linear layer)
whose weights are all zero, together with its bias and the matching input channels of the next
layer. There is no folding, no cascading (a filter that loses all its inputs in this pass stays) and
no detection of unused channels (read with zero weights by every consumer). After the fusion a dead
filter's bias is its batch-norm shift, so a dead filter whose shift is not zero still outputs a
constant: dropping it changes the outputs. That is the error :func:`compact_original` reproduces.

The original code is VGG-only. The rule is carried over to other networks only as far as it
reaches: a dead filter is dropped when its output flows into convolutions or linear layers through
single-input ops that keep channels apart (activations, pooling, dropout, flatten); a filter whose
output reaches an addition, a concatenation, a grouped convolution or the model output is kept,
because the rule has no notion of slicing those.

It ships with the package, not only with the benchmarks, because users run it: the demo
(:class:`lightning_shifter.demo.OriginalRule`, ``lightning-shifter demo``) compacts each IMP round
with it next to :func:`~lightning_shifter.compaction.compact` to report the original rule's size and
error on the same masks, and ``bench/compaction.py`` and ``bench/real_runs.py`` compare the two.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    >>> with torch.no_grad():
    ...     model[0].weight[:3] = 0
    >>> small = compact_original(model, torch.randn(1, 3, 8, 8))
    >>> small.get_submodule("0").out_channels, small.get_submodule("3").in_channels
    (5, 5)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["compact_original"]

_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Identity, nn.Dropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_CHANNELWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.dropout,
                          F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}


def _plain_layer(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The convolution (one group) or linear layer ``node`` calls, if it calls one."""
    module = modules.get(node.target) if node.op == "call_module" else None
    if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
        return module
    return None


def _readers(node: fx.Node, modules: dict[str, nn.Module], repeat: int = 1) -> list[tuple[nn.Module, int]] | None:
    """The next layers reading ``node``'s channels, each with how many inputs one channel became
    (a flatten spreads a channel over its positions); None when the rule cannot slice a reader."""
    found: list[tuple[nn.Module, int]] = []
    for user in node.users:
        layer = _plain_layer(user, modules)
        if layer is not None and user.args[0] is node:
            found.append((layer, repeat))
            continue
        module = modules.get(user.target) if user.op == "call_module" else None
        if isinstance(module, _CHANNELWISE_MODULES) or (user.op == "call_function" and user.target in _CHANNELWISE_FUNCTIONS):
            further = _readers(user, modules, repeat)
        elif isinstance(module, nn.Flatten) or (user.op == "call_function" and user.target is torch.flatten):
            shape = node.meta["tensor_meta"].shape
            further = _readers(user, modules, repeat * shape[2:].numel())
        else:
            return None
        if further is None:
            return None
        found += further
    return found or None


def compact_original(model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> fx.GraphModule:
    """Fuse batch-norms, then drop all-zero filters with their bias and next-layer inputs, one pass.

    ``model`` is not modified. The result generally differs from ``model`` (see the module docs).
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    gm = fuse(copy.deepcopy(model).eval(), inplace=True)
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    modules = dict(gm.named_modules())
    keep_out: dict[nn.Module, Tensor] = {}
    keep_in: dict[nn.Module, Tensor] = {}
    for node in gm.graph.nodes:  # every decision is taken on the fused weights, before any slicing
        layer = _plain_layer(node, modules)
        if layer is None:
            continue
        dead = (layer.weight.detach().flatten(1) == 0).all(1)
        readers = _readers(node, modules) if dead.any() else None
        if readers is None:
            continue
        if dead.all():  # keep one filter so that every layer keeps a valid shape
            dead[0] = False
        keep_out[layer] = ~dead
        for reader, repeat in readers:
            keep_in[reader] = ~dead.repeat_interleave(repeat)
    with torch.no_grad():
        for layer in set(keep_out) | set(keep_in):
            rows = keep_out.get(layer, torch.ones(layer.weight.shape[0], dtype=torch.bool))
            columns = keep_in.get(layer, torch.ones(layer.weight.shape[1], dtype=torch.bool))
            layer.weight = nn.Parameter(layer.weight[rows][:, columns].clone())
            if layer.bias is not None:
                layer.bias = nn.Parameter(layer.bias[rows].clone())
            if isinstance(layer, nn.Linear):
                layer.out_features, layer.in_features = layer.weight.shape
            else:
                layer.out_channels, layer.in_channels = layer.weight.shape[:2]
    return gm
