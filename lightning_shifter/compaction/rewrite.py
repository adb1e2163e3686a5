"""Apply a :class:`~.removal.Removal` to the traced copy: one slice per parameter tensor.

Removed constant inputs are folded into the reader's bias (``bias += W[:, c] . k``, summed over the
kernel). Module tensors that a channel rule declared per channel (:meth:`.graph.Analysis.slice_with`)
lose the entries of removed channels. A placeholder channel (kept only so that no tensor ends up
with zero channels) has its producing weight rows zeroed and every read of it zeroed, after folding
its constant like a removed one, so its value no longer matters and nothing upstream depends on it.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from lightning_shifter.compaction.graph import ChannelGraph, Layer, Read
from lightning_shifter.compaction.removal import Removal


def _parameter(value: Tensor, like: Tensor | None) -> nn.Parameter:
    requires_grad = like.requires_grad if like is not None else True
    return nn.Parameter(value.contiguous(), requires_grad=requires_grad)


def _select(value: Tensor, dim: int, keep: Tensor) -> Tensor:
    """``value`` without the dropped entries along ``dim`` (a new tensor even if nothing is dropped)."""
    return value.index_select(dim, keep.nonzero().squeeze(1))  # twice as fast as a boolean index


def _rewrite_batch_norm(layer: Layer, keep: Tensor) -> None:
    module = layer.module
    module.num_features = int(keep.sum())
    for name in ("weight", "bias"):
        old = getattr(module, name)
        if old is not None:
            setattr(module, name, _parameter(_select(old.detach(), 0, keep), old))
    module.running_mean = _select(module.running_mean, 0, keep)
    module.running_var = _select(module.running_var, 0, keep)


def _rewrite_weighted(layer: Layer, read: Read | None, removal: Removal) -> None:
    module = layer.module
    keep_out = ~removal.gone(layer.out_ids)
    hold_out = removal.held(layer.out_ids)[keep_out]
    keep_in = ~removal.gone(layer.in_ids)
    extra_bias = None
    hold_in = None
    if read is not None:
        channels = read.channels
        fold = (~keep_in | removal.held(channels.ids)) & channels.const & ~channels.zero
        if fold.any():
            extra_bias = read.weight_sum(fold) @ channels.value[fold]
            if not extra_bias.any():  # e.g. a placeholder already read with zero weights
                extra_bias = None
        hold_in = removal.held(channels.ids)[keep_in]
    changed = not bool(keep_out.all() and keep_in.all()) or extra_bias is not None
    changed = changed or bool(hold_out.any()) or (hold_in is not None and bool(hold_in.any()))
    if not changed:
        return

    weight = _select(module.weight.detach(), 0, keep_out)
    if layer.groups == 1 and not keep_in.all():
        weight = _select(weight, 1, keep_in)
    if hold_in is not None and hold_in.any():
        weight[:, hold_in] = 0
    weight[hold_out] = 0
    bias = module.bias.detach() if module.bias is not None else None
    if extra_bias is not None:
        base = bias.to(torch.float64) if bias is not None else torch.zeros_like(extra_bias)
        bias = (base + extra_bias).to(weight.dtype)
    old_weight, old_bias = module.weight, module.bias
    module.weight = _parameter(weight, old_weight)
    if bias is not None:
        module.bias = _parameter(_select(bias, 0, keep_out), old_bias if old_bias is not None else old_weight)
    if isinstance(module, nn.Linear):
        module.in_features, module.out_features = int(keep_in.sum()), int(keep_out.sum())
    else:
        module.in_channels, module.out_channels = int(keep_in.sum()), int(keep_out.sum())
        if layer.groups > 1:
            module.groups = int(keep_out.view(layer.groups, -1)[:, 0].sum())


def rewrite(gm: fx.GraphModule, graph: ChannelGraph, removal: Removal) -> None:
    """Slice the modules of ``gm`` (a private copy) in place and turn flattening views into flattens."""
    reads = {id(read.layer): read for read in graph.reads}
    for layer in graph.layers:
        if isinstance(layer.module, nn.modules.batchnorm._BatchNorm):
            keep = ~removal.gone(layer.out_ids)
            if not keep.all():
                _rewrite_batch_norm(layer, keep)
        else:
            _rewrite_weighted(layer, reads.get(id(layer)), removal)
    for module, name, dim, ids in graph.sliced:  # per-channel tensors named by a channel rule
        keep = ~removal.gone(ids)
        if not keep.all():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            old = getattr(owner, leaf)
            new = _select(old.detach(), dim, keep)
            setattr(owner, leaf, _parameter(new, old) if isinstance(old, nn.Parameter) else new)
    # a view with literal sizes would break once channels are gone; flatten states the intent
    for node, (start, end) in graph.flattens.items():
        node.op, node.target = "call_function", torch.flatten
        node.args, node.kwargs = (node.args[0], start, end), {}
    if graph.flattens:
        gm.recompile()
