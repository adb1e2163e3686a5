"""Channel-level abstract interpretation of a traced model.

Why torch.fx rather than torch.export or Torch-Pruning's dependency graph: a symbolic trace takes
about 10 ms for a ResNet, keeps every ``nn.Module`` call as one node (so the rewrite is "replace the
parameters of that module"), and exposes the few functions (add, cat, flatten, mean, ...) whose
channel semantics we need. ``torch.export`` costs seconds and lowers modules to aten ops;
Torch-Pruning finds coupled channels but does not prove that removing them preserves the function,
and coupling falls out of this interpretation anyway (a union of channel ids).

Every tensor in the graph gets, along its channel axis, one *channel id* per channel and a state
per channel: constant (uniform over every other axis, batch included) with a known value, or
varying. A zero channel is a constant 0. Ops that keep channel ``c`` at index ``c`` (batch-norm,
activations, pooling, elementwise arithmetic) reuse or unite the ids of their inputs; cat
concatenates them; flatten repeats each one over the merged positions; convolutions and linear
layers create new ids (grouped convolutions unite each group's inputs and outputs, because a
group can only go as a whole). A connected set of ids is a *channel set*: it is removed entirely
or not at all.

The only places where a set can disappear without changing the function are the reads of a
tensor by a convolution (``groups == 1``) or a linear layer: a channel read there can go when it is
zero, when every surviving output reads it with zero weights ("unused"), or when it is a constant
the layer can absorb into its bias exactly (linear layers, and convolutions whose every output
position sees the same kernel taps). These reads are collected as :class:`Read`. Weights count
only on the taps that meet the input at the recorded shape (:func:`_taps`): on small maps the
others multiply padding zeros for every input of that shape.

Which of these transfer functions an op gets is decided by its channel rule (:mod:`.rules`: the
built-in ones and those users register). An op without a rule pins the channels it touches (they
stay), its result counts as varying, and it is named in ``unsupported``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn

from lightning_shifter.compaction.rules import ChannelRuleError, describe, node_arg, op_name, rule_for, tensor_inputs

_HARMLESS_ATTRS = {"dtype", "device", "ndim", "is_cuda", "requires_grad"}


@dataclass
class Channels:
    """Per-channel facts about one tensor: ids along ``axis`` (negative) and constant values."""

    axis: int
    ids: Tensor  # int64 [C]
    const: Tensor  # bool [C]: uniform over every other axis, batch included
    value: Tensor  # float64 [C]: the constant (0 where not constant)

    @property
    def zero(self) -> Tensor:
        return self.const & (self.value == 0)


@dataclass
class Layer:
    """A convolution, linear or batch-norm call whose channels the rewrite may slice."""

    node: fx.Node
    module: nn.Module
    in_ids: Tensor | None  # None: the input is opaque, keep every input channel
    out_ids: Tensor
    groups: int = 1


@dataclass
class Read:
    """A convolution (groups == 1) or linear layer reading a tensor: where channels can vanish."""

    layer: Layer
    channels: Channels
    nonzero: Tensor  # bool [out, in]: which weights are nonzero (on taps that read the input)
    foldable: bool  # a constant input can be moved into the bias exactly
    taps: Tensor | None = None  # bool [kernel positions]: taps that read the input; None: all

    def weight_sum(self, columns: Tensor) -> Tensor:
        """float64 [out, columns]: the reader's weights on these inputs, summed over the kernel."""
        weight = self.layer.module.weight.detach()
        return _kernel_sum(weight, weight.shape[0], weight.shape[1], columns, self.taps)


@dataclass
class ChannelGraph:
    """What :func:`analyse` found: channel sets, where they are read, and what pins them."""

    num_ids: int
    unions: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    pins: list[tuple[Tensor, str]] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    values: dict[fx.Node, Channels] = field(default_factory=dict)
    flattens: dict[fx.Node, tuple[int, int]] = field(default_factory=dict)  # view/reshape -> flatten
    unsupported: list[str] = field(default_factory=list)
    # (module, tensor name, dim, channel ids): module tensors indexed by channels, sliced with them
    sliced: list[tuple[nn.Module, str, int, Tensor]] = field(default_factory=list)
    user_rules: list[str] = field(default_factory=list)  # where a rule registered by the user was applied


def _kernel_sum(weight: Tensor, out_count: int, per_group: int, columns: Tensor, taps: Tensor | None) -> Tensor:
    picked = weight.reshape(out_count, per_group, -1).index_select(1, columns.nonzero().squeeze(1))
    if taps is not None:
        picked = picked[..., taps]
    return picked.sum(-1, dtype=torch.float64)


def _nonzero_map(weight: Tensor, out_count: int, per_group: int, taps: Tensor | None) -> Tensor:
    """bool [out, in]: whether any weight of the kernel connecting them is nonzero."""
    kernels = weight.reshape(out_count * per_group, -1)
    if taps is not None:
        kernels = kernels[:, taps]
    if kernels.shape[1] == 1:
        return kernels.reshape(out_count, per_group) != 0
    # |w| summed by a matrix-vector product: about 2x faster than a boolean any() over a short last
    # axis; zero exactly when every |w| is zero (NaN stays nonzero)
    ones = torch.ones(kernels.shape[1], dtype=kernels.dtype, device=kernels.device)
    return (kernels.abs() @ ones).view(out_count, per_group) != 0


def _taps(conv: nn.modules.conv._ConvNd, in_shape: torch.Size) -> tuple[Tensor | None, bool]:
    """Which kernel taps ever read the input rather than zero padding, at this input size (None: all
    of them), and whether every output position reads all of those taps: then a constant input
    gives a uniform output. On small maps (a 3x3 convolution of a 1x1 map reads only its centre)
    the other taps multiply zeros for every input of this shape, so their weights do not count."""
    if conv.padding_mode != "zeros":
        return None, True  # reflect/replicate/circular padding of a constant is the same constant
    dims = len(conv.kernel_size)
    reach, uniform = [], True
    for axis in range(dims):
        kernel, dilation = conv.kernel_size[axis], conv.dilation[axis]
        if conv.padding == "valid":
            before = after = 0
        elif conv.padding == "same":
            before = dilation * (kernel - 1) // 2
            after = dilation * (kernel - 1) - before
        else:
            before = after = conv.padding[axis]
        size = in_shape[len(in_shape) - dims + axis]
        axis_reach, axis_uniform = _axis_taps(size, kernel, conv.stride[axis], dilation, before, after)
        reach.append(torch.tensor(axis_reach))
        uniform &= axis_uniform
    taps = reach[0]
    for axis_reach in reach[1:]:
        taps = (taps[:, None] & axis_reach[None, :]).reshape(-1)
    return (None if bool(taps.all()) else taps), uniform


@functools.lru_cache(maxsize=256)
def _axis_taps(size: int, kernel: int, stride: int, dilation: int, before: int, after: int) -> tuple[tuple[bool, ...], bool]:
    """Along one axis: which taps meet the input at some output position, and whether at all of them."""
    outputs = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    position = torch.arange(outputs)[:, None] * stride - before + torch.arange(kernel)[None, :] * dilation
    inside = (position >= 0) & (position < size)  # [output position, tap]
    reach = inside.any(0)
    return tuple(reach.tolist()), bool((inside == reach).all())


class Analysis:
    """The channel-level interpretation of one traced model, as a channel rule sees it.

    A rule (:mod:`.rules`) is called as ``rule(analysis, node)`` for each node it is registered for
    and records what the node's result holds with these methods: :meth:`channels` and
    :meth:`shape` of a value, :meth:`module` a node calls, :meth:`same` (the result keeps channel
    ``c`` at index ``c``), :meth:`slice_with` (a module tensor indexed by those channels),
    :meth:`unsupported` (keep what the node touches). The built-in rules also use the transfer
    functions below (:meth:`conv`, :meth:`batch_norm`, :meth:`pool`, :meth:`flatten`,
    :meth:`reshape`, :meth:`reduce`, :meth:`binary`, :meth:`cat`). A node whose result is not a
    tensor (a size, a tuple) is handled here, not by a rule: it may only read shapes.
    """

    def __init__(self, gm: fx.GraphModule, meta: dict[fx.Node, Any]):
        self.gm = gm
        self.meta = meta  # node -> torch.Size for tensor results, or the python value
        self.modules = dict(gm.named_modules())
        self.graph = ChannelGraph(num_ids=0)
        self.calls: dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1

    # -- helpers ---------------------------------------------------------------------------
    def fresh(self, count: int) -> Tensor:
        ids = torch.arange(self.graph.num_ids, self.graph.num_ids + count)
        self.graph.num_ids += count
        return ids

    def shape(self, node: Any) -> torch.Size | None:
        """The shape ``node`` had on the example, or None when it is not a tensor node."""
        value = self.meta.get(node) if isinstance(node, fx.Node) else None
        return value if isinstance(value, torch.Size) else None

    def channels(self, value: Any) -> Channels | None:
        """What is known of the channels of ``value`` (a node computed before), or None: opaque."""
        return self.graph.values.get(value) if isinstance(value, fx.Node) else None

    def module(self, node: fx.Node) -> nn.Module | None:
        """The module a ``call_module`` node calls (None for other nodes)."""
        return self.modules[node.target] if node.op == "call_module" else None

    def called_once(self, node: fx.Node) -> bool:
        """Whether the module of this ``call_module`` node is called nowhere else in the graph."""
        return self.calls[node.target] == 1

    def slice_with(self, module: nn.Module, name: str, dim: int, source: Channels) -> None:
        """The tensor ``name`` of ``module`` (a parameter or buffer) is indexed along ``dim`` by the
        channels of ``source``: the rewrite removes its entries where those channels go."""
        tensors = {**dict(module.named_parameters(remove_duplicate=False)),
                   **dict(module.named_buffers(remove_duplicate=False))}
        tensor = tensors.get(name)
        if tensor is None:
            raise ValueError(f"{type(module).__name__} has no parameter or buffer '{name}'")
        count = source.ids.numel()
        if not -tensor.dim() <= dim < tensor.dim() or tensor.shape[dim] != count:
            raise ValueError(
                f"{type(module).__name__}.{name} of shape {tuple(tensor.shape)} is not indexed by the "
                f"{count} channels of its input along dim {dim}"
            )
        self.graph.sliced.append((module, name, dim, source.ids))

    def pin(self, nodes: list[fx.Node], reason: str) -> None:
        for node in nodes:
            channels = self.graph.values.get(node)
            if channels is not None:
                self.graph.pins.append((channels.ids, reason))

    def unsupported(self, node: fx.Node, why: str) -> None:
        """Keep everything this node touches; its result is opaque (varying, untouchable)."""
        name = f"{node.name} ({why})"
        self.graph.unsupported.append(name)
        self.pin(tensor_inputs((node.args, node.kwargs)), f"read by unsupported op {name}")

    def read_channels(self, node: Any, axis: int, reader: str) -> Channels:
        """The input of a layer along ``axis``; an opaque or misaligned input is pinned varying."""
        shape = self.shape(node)
        channels = self.graph.values.get(node)
        if channels is not None and channels.axis == axis:
            return channels
        size = shape[axis]
        ids = self.fresh(size)
        reason = f"input of '{reader}' whose channels are not traced back to a layer"
        self.graph.pins.append((ids, reason))
        if channels is not None:  # a tensor with channels along another axis: keep all of them
            self.graph.pins.append((channels.ids, f"read along another axis by '{reader}'"))
        return Channels(axis, ids, torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.float64))

    def same(self, node: fx.Node, source: Channels, value_fn: Callable[[Tensor], Tensor] | None) -> None:
        """Result keeps channel c at index c; ``value_fn`` maps constants (None: varying)."""
        axis = source.axis
        shape = self.shape(node)
        if shape is None or len(shape) < -axis or shape[axis] != source.ids.numel():
            return self.unsupported(node, "changes the channel axis")
        if value_fn is None:
            const = torch.zeros_like(source.const)
            value = torch.zeros_like(source.value)
        else:
            const = source.const.clone()
            value = torch.where(const, value_fn(source.value.clone()).to(torch.float64), 0.0)
            const &= torch.isfinite(value)
            value = torch.where(const, value, 0.0)
        self.graph.values[node] = Channels(axis, source.ids, const, value)

    # -- main loop ---------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                continue  # opaque: whatever reads it keeps its channels
            if node.op == "output":
                self.pin(tensor_inputs(node.args), "graph output")
                continue
            if self.shape(node) is None:
                self.non_tensor(node)
                continue
            if node.op in ("call_module", "call_function", "call_method"):
                self.apply_rule(node)
        return self.graph

    def non_tensor(self, node: fx.Node) -> None:
        """A node whose result is not a tensor (sizes, tuples): it may read shapes only."""
        inputs = [n for n in tensor_inputs((node.args, node.kwargs)) if n in self.graph.values]
        if not inputs:
            return
        if node.op == "call_method" and node.target == "size" and len(node.args) + len(node.kwargs) == 2:
            channels = self.graph.values[node.args[0]]
            dim = node_arg(node, 1, "dim", None)
            ndim = len(self.shape(node.args[0]))
            if isinstance(dim, int) and (dim - ndim if dim >= 0 else dim) != channels.axis:
                return  # size of another axis: unchanged by compaction
        if node.op == "call_method" and node.target == "dim":
            return
        if node.op == "call_function" and node.target is getattr and node.args[1] in _HARMLESS_ATTRS:
            return
        self.unsupported(node, "reads a channel count or returns several tensors")

    def apply_rule(self, node: fx.Node) -> None:
        """Run the rule registered for this node's op; an op without one keeps what it touches."""
        module = self.module(node)
        found = rule_for(node, module)
        if found is None:
            return self.unsupported(node, op_name(node, module))
        rule, registered_by_user = found
        if not registered_by_user:
            return rule(self, node)
        where = f"{describe(rule)} registered for {op_name(node, module)} (graph node '{node.name}')"
        try:
            rule(self, node)
        except Exception as exc:
            raise ChannelRuleError(
                f"the channel rule {where} failed: {type(exc).__name__}: {exc}. "
                "Fix the rule, or unregister it (unregister_channel_rule) to keep that op's channels as they are."
            ) from exc
        self.graph.user_rules.append(where)

    # -- layers ------------------------------------------------------------------------------
    def conv(self, node: fx.Node, module: nn.Module) -> None:
        linear = isinstance(module, nn.Linear)
        shape = self.shape(node.args[0])
        if len(node.args) != 1 or node.kwargs or shape is None:
            return self.unsupported(node, "unexpected call signature")
        axis = -1 if linear else 1 - len(shape)
        channels = self.read_channels(node.args[0], axis, node.target)
        weight = module.weight.detach()
        out_count = weight.shape[0]
        groups = 1 if linear else module.groups
        per_group = weight.shape[1]
        taps, uniform = (None, True) if linear else _taps(module, shape)
        nonzero = _nonzero_map(weight, out_count, per_group, taps)
        padded = not uniform
        bias = module.bias.detach().to(torch.float64) if module.bias is not None else torch.zeros(out_count, dtype=torch.float64)

        # an output is constant when no nonzero weight reads a varying input (or, through zero
        # padding, a nonzero constant); its value is the bias plus the weighted constants
        in_const, in_value = channels.const.view(groups, per_group), channels.value.view(groups, per_group)
        blocking = ~in_const | (padded & (in_value != 0))
        if groups > 1:  # per output row, the inputs of its group (broadcast when groups == 1)
            out_group = torch.arange(out_count) // (out_count // groups)
            blocking, in_value = blocking[out_group], in_value[out_group]
        out_const = ~nonzero.any(1) if bool(blocking.all()) else ~(nonzero & blocking).any(1)
        out_value = bias.clone()
        columns = (in_const & (in_value != 0)).any(0) if groups == 1 else (in_value != 0).any(0)
        if columns.any():
            weight_sum = _kernel_sum(weight, out_count, per_group, columns, taps)
            out_value += (weight_sum * in_value[:, columns]).sum(1)
        out_value = torch.where(out_const, out_value, 0.0)

        if groups == 1:
            out_ids = self.fresh(out_count)
            layer = Layer(node, module, channels.ids, out_ids, 1)
            self.graph.reads.append(Read(layer, channels, nonzero, not padded, taps))
        else:  # a group's inputs and outputs go together or not at all
            in_ids = channels.ids.view(groups, per_group)
            out_ids = self.fresh(out_count)
            anchor = in_ids[:, :1]
            self.graph.unions.append((anchor.expand_as(in_ids).reshape(-1), in_ids.reshape(-1)))
            grouped_out = out_ids.view(groups, -1)
            self.graph.unions.append((anchor.expand_as(grouped_out).reshape(-1), grouped_out.reshape(-1)))
            layer = Layer(node, module, channels.ids, out_ids, groups)
        self.graph.layers.append(layer)
        out_axis = -1 if linear else 1 - len(self.shape(node))
        self.graph.values[node] = Channels(out_axis, layer.out_ids, out_const, out_value)

    def batch_norm(self, node: fx.Node, module: nn.modules.batchnorm._BatchNorm) -> None:
        shape = self.shape(node.args[0])
        if module.running_mean is None or module.running_var is None:
            return self.unsupported(node, "batch-norm without running statistics")
        if len(node.args) != 1 or node.kwargs or shape is None or len(shape) < 2:
            return self.unsupported(node, "unexpected call signature")
        channels = self.read_channels(node.args[0], 1 - len(shape), node.target)
        mean = module.running_mean.detach().to(torch.float64)
        inv_std = torch.rsqrt(module.running_var.detach().to(torch.float64) + module.eps)
        weight = module.weight.detach().to(torch.float64) if module.weight is not None else torch.ones_like(mean)
        bias = module.bias.detach().to(torch.float64) if module.bias is not None else torch.zeros_like(mean)
        const = channels.const | (weight == 0)  # a zero scale makes the output the shift
        value = torch.where(const, (channels.value - mean) * inv_std * weight + bias, 0.0)
        value = torch.where(weight == 0, bias, value)
        self.graph.layers.append(Layer(node, module, channels.ids, channels.ids))
        self.graph.values[node] = Channels(channels.axis, channels.ids, const, value)

    # -- channel-preserving ops ----------------------------------------------------------------
    def pool(self, node: fx.Node, source: Channels, uniform: bool) -> None:
        """Pooling; ``uniform``: a constant input gives the same constant at every output position."""
        if uniform:
            return self.same(node, source, lambda v: v)
        # borders average in padding zeros: only a zero stays uniform
        self.same(node, source, lambda v: torch.where(v == 0, 0.0, float("nan")))

    def flatten(self, node: fx.Node, source: Channels, start: int, end: int) -> None:
        shape = self.shape(node.args[0])
        ndim = len(shape)
        start, end = start % ndim if ndim else 0, end % ndim if ndim else 0
        position = ndim + source.axis
        out_ndim = ndim - (end - start)
        if not start <= position <= end:  # the channel axis is not merged: it only moves
            out_position = position if position < start else position - (end - start)
            self.graph.values[node] = Channels(out_position - out_ndim, source.ids, source.const, source.value)
            return
        merged = shape[start:end + 1]
        view = [1] * len(merged)
        view[position - start] = -1

        def spread(t: Tensor) -> Tensor:
            return t.view(view).expand(merged).reshape(-1)

        self.graph.values[node] = Channels(
            start - out_ndim, spread(source.ids), spread(source.const), spread(source.value)
        )
        return None

    def reshape(self, node: fx.Node, source: Channels) -> None:
        """A view/reshape is understood when it is a flatten; it is rewritten as one."""
        before, after = tuple(self.shape(node.args[0])), tuple(self.shape(node))
        if before == after:
            self.graph.flattens[node] = (0, 0)
            return self.same(node, source, lambda v: v)
        for start in range(len(before)):
            for end in range(start + 1, len(before)):
                merged = before[:start] + (torch.Size(before[start:end + 1]).numel(),) + before[end + 1:]
                if merged == after:
                    self.graph.flattens[node] = (start, end)
                    return self.flatten(node, source, start, end)
        self.unsupported(node, "reshape that is not a flatten")

    def reduce(self, node: fx.Node, source: Channels, is_sum: bool) -> None:
        shape = self.shape(node.args[0])
        ndim = len(shape)
        dims = node_arg(node, 1, "dim", None)
        keepdim = node_arg(node, 2, "keepdim", False)
        if dims is None or node.kwargs.keys() - {"dim", "keepdim"}:
            return self.unsupported(node, "reduction over every axis")
        dims = {d % ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        position = ndim + source.axis
        if position in dims:
            return self.unsupported(node, "reduction over the channel axis")
        count = 1
        for d in dims:
            count *= shape[d]
        out_position = position if keepdim else position - sum(d < position for d in dims)
        out_ndim = ndim if keepdim else ndim - len(dims)
        value = source.value * count if is_sum else source.value
        self.graph.values[node] = Channels(out_position - out_ndim, source.ids, source.const.clone(), value)

    def binary(self, node: fx.Node, name: str, op: Callable[[Any, Any], Any]) -> None:
        operands = list(node.args) + list(node.kwargs.values())
        if len(operands) != 2:
            return self.unsupported(node, f"{name} with extra arguments")
        out_shape = self.shape(node)
        # the channel layout comes from an operand with the result's full shape
        lead = next(
            (o for o in operands if self.shape(o) == out_shape and o in self.graph.values), None
        )
        if lead is None:
            return self.unsupported(node, f"{name} of tensors without traced channels")
        axis = self.graph.values[lead].axis
        size = out_shape[axis]
        const = torch.ones(size, dtype=torch.bool)
        zero = torch.zeros(size, dtype=torch.bool)
        values: list[Any] = []
        coupled: list[Tensor] = []
        for operand in operands:
            if not isinstance(operand, fx.Node):
                if not isinstance(operand, (int, float, bool)):
                    return self.unsupported(node, f"{name} with a {type(operand).__name__}")
                values.append(float(operand))
                zero |= operand == 0
                continue
            shape = self.shape(operand)
            channels = self.graph.values.get(operand)
            if shape is None or channels is None:
                return self.unsupported(node, f"{name} with an untraced operand")
            if channels.axis == axis and len(shape) >= -axis and shape[axis] == size:
                coupled.append(channels.ids)
                const &= channels.const
                zero |= channels.zero
                values.append(channels.value)
                continue
            if len(shape) >= -axis and shape[axis] != 1:
                return self.unsupported(node, f"{name} of tensors with different channel layouts")
            # broadcast along the channels: its own channels stay, as a whole
            self.graph.pins.append((channels.ids, f"broadcast into '{node.name}'"))
            uniform = bool(channels.const.all()) and bool((channels.value == channels.value[0]).all())
            const &= uniform
            zero |= uniform and bool(channels.value[0] == 0)
            values.append(float(channels.value[0]) if uniform else 0.0)
        value = torch.as_tensor(op(*values), dtype=torch.float64).expand(size).clone()
        if name == "mul":
            const |= zero
            value = torch.where(zero, 0.0, value)
        const &= torch.isfinite(value)
        value = torch.where(const, value, 0.0)
        for ids in coupled[1:]:
            self.graph.unions.append((coupled[0], ids))
        self.graph.values[node] = Channels(axis, coupled[0], const, value)

    def cat(self, node: fx.Node) -> None:
        inputs = node_arg(node, 0, "tensors", None)
        dim = node_arg(node, 1, "dim", 0)
        if not isinstance(inputs, (list, tuple)) or not all(n in self.graph.values for n in inputs):
            return self.unsupported(node, "cat of tensors without traced channels")
        parts = [self.graph.values[n] for n in inputs]
        ndim = len(self.shape(node))
        axis = parts[0].axis
        if any(p.axis != axis or len(self.shape(n)) != ndim for p, n in zip(parts, inputs)):
            return self.unsupported(node, "cat of tensors with different channel layouts")
        if dim % ndim == ndim + axis:
            self.graph.values[node] = Channels(
                axis,
                torch.cat([p.ids for p in parts]),
                torch.cat([p.const for p in parts]),
                torch.cat([p.value for p in parts]),
            )
            return None
        # concatenation along another axis: channel c of every part is channel c of the result
        const = parts[0].const.clone()
        for part in parts[1:]:
            self.graph.unions.append((parts[0].ids, part.ids))
            const &= part.const & (part.value == parts[0].value)
        self.graph.values[node] = Channels(axis, parts[0].ids, const, torch.where(const, parts[0].value, 0.0))
        return None


def analyse(gm: fx.GraphModule, meta: dict[fx.Node, Any]) -> ChannelGraph:
    """Interpret ``gm`` channel by channel; ``meta`` holds each node's result shape."""
    return Analysis(gm, meta).run()
