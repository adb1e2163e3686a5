"""Channel rules: what each op of a traced model does to channels, and how users teach new ones.

The analysis (:mod:`.graph`) asks this registry for the rule of every node that computes a tensor:
a ``call_module`` node by its module's type (the first class of its method resolution order that
has a rule, so a rule for a class covers its subclasses), a ``call_function`` node by its
function, a ``call_method`` node by the method's name. A rule is called as ``rule(analysis,
node)`` and records, through :class:`~.graph.Analysis`, which channels the node's result holds.
The built-in rules below (convolutions, linear layers, batch-norms, activations, pooling,
dropout, flatten and flattening views, means, arithmetic, concatenation) are registered exactly as
a user's are; a rule registered with :func:`register_channel_rule` takes precedence over a
built-in one for the same target. An op without a rule keeps every channel it touches, and its
result counts as varying and used (it is named in the report's ``unsupported``): never wrong,
only less small.

A rule only decides what the analysis believes; :func:`~lightning_shifter.compaction.compact`
still checks the compacted model against the original, so a rule that misdescribes its op makes
compaction fail, naming the rule, rather than return a wrong model.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

if TYPE_CHECKING:
    from lightning_shifter.compaction.graph import Analysis, Channels

__all__ = ["ChannelRule", "ChannelWise", "register_channel_rule", "unregister_channel_rule"]

ChannelRule = Callable[["Analysis", fx.Node], None]
"""A rule: ``rule(analysis, node)`` records what ``node``'s result holds, channel by channel."""


class ChannelRuleError(Exception):
    """A rule registered by the user failed; :func:`~lightning_shifter.compaction.compact` reports it."""


@dataclass
class _Rules:
    modules: dict[type, ChannelRule] = field(default_factory=dict)
    functions: dict[Any, ChannelRule] = field(default_factory=dict)
    methods: dict[str, ChannelRule] = field(default_factory=dict)

    def table(self, target: Any) -> dict[Any, ChannelRule]:
        if isinstance(target, str):
            return self.methods
        return self.modules if isinstance(target, type) else self.functions


_BUILTIN = _Rules()
_USER = _Rules()


def node_arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of ``node``'s call, given by position or as keyword ``name``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def tensor_inputs(args: Any) -> list[fx.Node]:
    """The graph nodes (tensors, sizes, ...) among ``args``, however nested."""
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return found


def op_name(node: fx.Node, module: nn.Module | None) -> str:
    """What the report calls the op of ``node``: its module's class, function or method name."""
    if module is not None:
        return type(module).__name__
    return getattr(node.target, "__name__", str(node.target))


def rule_for(node: fx.Node, module: nn.Module | None) -> tuple[ChannelRule, bool] | None:
    """The rule for ``node`` (``module``: the module it calls, if any) and whether a user registered it."""
    if module is not None:
        for cls in type(module).__mro__:
            if cls in _USER.modules:
                return _USER.modules[cls], True
            if cls in _BUILTIN.modules:
                return _BUILTIN.modules[cls], False
        return None
    method = node.op == "call_method"
    user, builtin = (_USER.methods, _BUILTIN.methods) if method else (_USER.functions, _BUILTIN.functions)
    try:
        if node.target in user:
            return user[node.target], True
        rule = builtin.get(node.target)
    except TypeError:  # an unhashable callable: no rule can name it
        return None
    return None if rule is None else (rule, False)


def leaf_module_types() -> tuple[type, ...]:
    """Module classes with a user rule: traced as one call instead of through their forward."""
    return tuple(_USER.modules)


def wrapped_functions() -> tuple[Callable[..., Any], ...]:
    """Functions with a user rule: traced as one call (where forward calls them by a global name)."""
    return tuple(_USER.functions)


def describe(rule: ChannelRule) -> str:
    return getattr(rule, "__qualname__", None) or repr(rule)


def register_channel_rule(target: type[nn.Module] | Callable[..., Any] | str, rule: ChannelRule) -> None:
    """Teach compaction what ``target`` does to channels, so that it no longer keeps them as they are.

    Args:
        target: a module class (its subclasses included; the module is then traced as one call,
            not through its ``forward``), a function (traced as one call where ``forward`` calls
            it by a global name not starting with ``_``, as with ``torch.fx``'s
            ``autowrap_functions``; otherwise wrap it with ``torch.fx.wrap``), or a tensor
            method's name such as ``"abs"``.
        rule: usually a :class:`ChannelWise`; any callable ``rule(analysis, node)`` that records
            the node's result through :class:`~lightning_shifter.compaction.graph.Analysis`, as
            the built-in rules of :mod:`lightning_shifter.compaction.rules` do. It replaces a
            rule registered before for the same target, built-in ones included.

    A wrong rule cannot produce a wrong model: :func:`~lightning_shifter.compaction.compact`
    verifies the result and raises ``CompactionError`` naming the rules it relied on.

    Example: a per-channel scale that compaction does not know (its channels are kept), taught in
    one line; then its dead channels go, its ``scale`` sliced with them::

        >>> import torch
        >>> from torch import nn
        >>> from lightning_shifter.compaction import ChannelWise, compact, register_channel_rule
        >>> class ChannelScale(nn.Module):
        ...     def __init__(self, channels):
        ...         super().__init__()
        ...         self.scale = nn.Parameter(torch.rand(channels) + 0.5)
        ...     def forward(self, x):
        ...         return x * self.scale.view(-1, 1, 1)
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), ChannelScale(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> with torch.no_grad():  # three dead filters
        ...     model[0].weight[:3] = 0
        ...     model[0].bias[:3] = 0
        >>> compact(model, torch.randn(1, 3, 8, 8)).module.get_submodule("3").in_channels
        8
        >>> register_channel_rule(ChannelScale, ChannelWise(per_channel={"scale": 0}))
        >>> result = compact(model, torch.randn(1, 3, 8, 8))
        >>> result.module.get_submodule("3").in_channels, result.module.get_submodule("1").scale.shape
        (5, torch.Size([5]))

    A function (called by its global name in ``forward``) or a tensor method works the same way::

        >>> def squash(x):
        ...     return x / (1 + x.abs())
        >>> class Squashed(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
        ...     def forward(self, x):
        ...         return self.b(squash(self.a(x)))
        >>> net = Squashed()
        >>> with torch.no_grad():  # two dead neurons
        ...     net.a.weight[:2] = 0
        ...     net.a.bias[:2] = 0
        >>> compact(net, torch.randn(1, 4)).module.b.in_features  # abs() is unknown: kept
        6
        >>> register_channel_rule(squash, ChannelWise())  # or: register_channel_rule("abs", ChannelWise())
        >>> compact(net, torch.randn(1, 4)).module.b.in_features
        4
        >>> for target in (ChannelScale, squash):  # back to the built-in rules
        ...     unregister_channel_rule(target)
    """
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(f"a channel rule's target class must be an nn.Module subclass, got {target.__name__}")
    elif isinstance(target, str):
        if not target.isidentifier():
            raise ValueError(f"a channel rule's method target must be a tensor method's name, got {target!r}")
    elif not callable(target):
        raise TypeError(
            "a channel rule's target must be a module class, a function or a tensor method's name, "
            f"got {type(target).__name__}"
        )
    else:
        try:
            hash(target)
        except TypeError:
            raise TypeError(f"a channel rule's target function must be hashable, got {type(target).__name__}") from None
    if not callable(rule):
        raise TypeError(f"a channel rule must be callable as rule(analysis, node), got {type(rule).__name__}")
    if isinstance(rule, ChannelWise) and rule.per_channel and not isinstance(target, type):
        raise ValueError(
            f"ChannelWise(per_channel=...) names tensors of a module: register it for a module class, not {target!r}"
        )
    _USER.table(target)[target] = rule


def unregister_channel_rule(target: type[nn.Module] | Callable[..., Any] | str) -> None:
    """Forget the rule registered for ``target``: its built-in rule applies again, if it has one.

    Example:
        >>> from torch import nn
        >>> from lightning_shifter.compaction import ChannelWise, register_channel_rule
        >>> register_channel_rule(nn.PReLU, ChannelWise(per_channel={"weight": 0}))
        >>> unregister_channel_rule(nn.PReLU)
        >>> unregister_channel_rule(nn.PReLU)
        Traceback (most recent call last):
        ...
        KeyError: 'no channel rule was registered for PReLU'
    """
    table = _USER.table(target)
    if target not in table:
        raise KeyError(f"no channel rule was registered for {getattr(target, '__name__', target)}")
    del table[target]


@dataclass(frozen=True)
class ChannelWise:
    """The rule of an op whose output channel ``c`` is computed from its input channel ``c`` alone.

    Activations, per-channel scales, shifts and clamps, ...: the analysis carries each channel
    through the op, so a channel that is zero, constant or unused on one side can go on both. The
    op takes the tensor as its first argument (its other arguments are not tensors) and keeps the
    channel axis at the same place from the end and with the same size.

    Args:
        evaluate: learn what a constant input channel (a dead filter's zero, a batch-norm's shift)
            becomes by running the op once, on a tensor of the input's shape holding the constants
            (float64, or the dtype of the module's parameters); an output channel that is not
            uniform then counts as varying. ``False``:
            every output channel counts as varying (for ops that cannot run so); a channel then
            goes only when nothing downstream reads it.
        per_channel: for a module, its parameters and buffers indexed by channel, as
            ``{name: dim}``: they are sliced along ``dim`` when channels go.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_shifter.compaction import compact, register_channel_rule, unregister_channel_rule
        >>> register_channel_rule(nn.PReLU, ChannelWise(per_channel={"weight": 0}))
        >>> model = nn.Sequential(nn.Linear(6, 5), nn.PReLU(5), nn.Linear(5, 2))
        >>> with torch.no_grad():  # two dead neurons: PReLU(0) is 0, so they go
        ...     model[0].weight[:2] = 0
        ...     model[0].bias[:2] = 0
        >>> result = compact(model, torch.randn(1, 6))
        >>> result.module.get_submodule("1").weight.shape, result.report.removed()["zero"]
        (torch.Size([3]), 2)
        >>> unregister_channel_rule(nn.PReLU)
    """

    evaluate: bool = True
    per_channel: Mapping[str, int] = field(default_factory=dict)

    def __call__(self, analysis: Analysis, node: fx.Node) -> None:
        module = analysis.module(node)
        source = analysis.channels(node.args[0]) if node.args else None
        if source is None or tensor_inputs((node.args[1:], node.kwargs)):
            return analysis.unsupported(node, op_name(node, module))
        if self.per_channel:
            if module is None:
                raise ValueError("per_channel names tensors of a module, but this op is not a module call")
            if not analysis.called_once(node):
                return analysis.unsupported(node, f"module '{node.target}' with per-channel tensors is called more than once")
            for name, dim in self.per_channel.items():
                analysis.slice_with(module, name, dim, source)
        analysis.same(node, source, self._constants(analysis, node, module, source) if self.evaluate else None)

    def _constants(self, analysis: Analysis, node: fx.Node, module: nn.Module | None,
                   source: Channels) -> Callable[[Tensor], Tensor]:
        shape = analysis.shape(node.args[0])

        def run(values: Tensor) -> Tensor:
            """Per channel, the op's output on the constant where it is uniform, NaN elsewhere."""
            if not bool(source.const.any()):
                return values
            view = [1] * len(shape)
            view[source.axis] = -1
            probe = values.to(_probe_dtype(module)).view(view).expand(shape).contiguous()
            with torch.no_grad():
                if module is not None:
                    saved = {name: buffer.clone() for name, buffer in module.named_buffers()}
                    try:
                        out = module(probe, *node.args[1:], **node.kwargs)
                    finally:  # a forward that updates a buffer must not change the model
                        for name, buffer in module.named_buffers():
                            if name in saved:
                                buffer.copy_(saved[name])
                elif node.op == "call_method":
                    out = getattr(probe, node.target)(*node.args[1:], **node.kwargs)
                else:
                    out = node.target(probe, *node.args[1:], **node.kwargs)
            per_channel = out.to(torch.float64).movedim(source.axis, -1).reshape(-1, values.numel())
            if per_channel.shape[0] == 0:
                return torch.full_like(values, float("nan"))
            first = per_channel[0]
            return torch.where((per_channel == first).all(0), first, float("nan"))

        return run


def _probe_dtype(module: nn.Module | None) -> torch.dtype:
    """float64, or the dtype of the module's floating tensors (ops such as prelu do not promote)."""
    if module is not None:
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float64


# -- the built-in rules --------------------------------------------------------------------------
def _builtin(targets: Any, rule: ChannelRule) -> None:
    for target in targets:
        _BUILTIN.table(target)[target] = rule


def _only_input(analysis: Analysis, node: fx.Node) -> Channels | None:
    """The channels of the first argument when no other argument is a tensor, else None."""
    first = node.args[0] if node.args else None
    source = analysis.channels(first)
    if source is None or tensor_inputs((node.args[1:], node.kwargs)):
        return None
    return source


def _weighted(analysis: Analysis, node: fx.Node) -> None:
    """Convolutions, linear layers and batch-norms: the layers whose channels the rewrite slices."""
    module = analysis.module(node)
    if not analysis.called_once(node):
        return analysis.unsupported(node, f"module '{node.target}' is called more than once")
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return analysis.batch_norm(node, module)
    if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
        return analysis.unsupported(node, "transposed convolution")
    analysis.conv(node, module)


def _pointwise_module(analysis: Analysis, node: fx.Node) -> None:
    module = analysis.module(node)
    source = analysis.channels(node.args[0]) if node.args else None
    if source is None or len(node.args) != 1:
        return analysis.unsupported(node, op_name(node, module))
    analysis.same(node, source, module)


def _pool_module(analysis: Analysis, node: fx.Node) -> None:
    module = analysis.module(node)
    source = analysis.channels(node.args[0]) if node.args else None
    if source is None:
        return analysis.unsupported(node, op_name(node, module))
    uniform = True  # a constant input gives the same constant everywhere
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        padding = module.padding if isinstance(module.padding, tuple) else (module.padding,)
        uniform = module.divisor_override is None and not module.ceil_mode and (
            not module.count_include_pad or not any(padding)
        )
    analysis.pool(node, source, uniform)


def _flatten_module(analysis: Analysis, node: fx.Node) -> None:
    module = analysis.module(node)
    source = analysis.channels(node.args[0]) if node.args else None
    if source is None:
        return analysis.unsupported(node, op_name(node, module))
    analysis.flatten(node, source, module.start_dim, module.end_dim)


def _pointwise_call(analysis: Analysis, node: fx.Node) -> None:
    """A function or method applied element by element, with non-tensor extra arguments."""
    source = _only_input(analysis, node)
    if source is None:
        return analysis.unsupported(node, op_name(node, None))
    target, rest, kwargs = node.target, node.args[1:], node.kwargs
    if node.op == "call_method":
        return analysis.same(node, source, lambda v: getattr(v, target)(*rest, **kwargs))
    analysis.same(node, source, lambda v: target(v, *rest, **kwargs))


def _dropout_call(analysis: Analysis, node: fx.Node) -> None:
    source = _only_input(analysis, node)
    if source is None:
        return analysis.unsupported(node, op_name(node, None))
    if node_arg(node, 2, "training", True) is False:
        return analysis.same(node, source, lambda v: v)
    analysis.unsupported(node, "dropout traced in training mode")


def _pool_call(analysis: Analysis, node: fx.Node) -> None:
    source = _only_input(analysis, node)
    if source is None:
        return analysis.unsupported(node, op_name(node, None))
    analysis.pool(node, source, True)


def _avg_pool_call(analysis: Analysis, node: fx.Node) -> None:
    source = _only_input(analysis, node)
    if source is None:
        return analysis.unsupported(node, op_name(node, None))
    padding = node_arg(node, 3, "padding", 0)
    padding = padding if isinstance(padding, (tuple, list)) else (padding,)
    uniform = (
        node_arg(node, 6, "divisor_override", None) is None
        and not node_arg(node, 4, "ceil_mode", False)
        and (not node_arg(node, 5, "count_include_pad", True) or not any(padding))
    )
    analysis.pool(node, source, uniform)


def _flatten_call(analysis: Analysis, node: fx.Node) -> None:
    source = _only_input(analysis, node)
    if source is None:
        return analysis.unsupported(node, op_name(node, None))
    analysis.flatten(node, source, node_arg(node, 1, "start_dim", 0), node_arg(node, 2, "end_dim", -1))


def _reduce_call(analysis: Analysis, node: fx.Node) -> None:
    source = _only_input(analysis, node)
    if source is None:
        return analysis.unsupported(node, op_name(node, None))
    analysis.reduce(node, source, node.target == "sum")


def _reshape_call(analysis: Analysis, node: fx.Node) -> None:
    source = analysis.channels(node.args[0]) if node.args else None
    if source is None:
        return analysis.unsupported(node, op_name(node, None))
    analysis.reshape(node, source)


def _arithmetic(name: str, op: Callable[[Any, Any], Any]) -> ChannelRule:
    def rule(analysis: Analysis, node: fx.Node) -> None:
        if set(node.kwargs) - {"other"}:
            return analysis.unsupported(node, op_name(node, None))
        analysis.binary(node, name, op)

    rule.__qualname__ = f"arithmetic({name})"
    return rule


def _cat_call(analysis: Analysis, node: fx.Node) -> None:
    analysis.cat(node)


_builtin([nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm], _weighted)
_builtin([
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
], _pointwise_module)
_builtin([
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
], _pool_module)
_builtin([nn.Flatten], _flatten_module)
_builtin([
    torch.relu, F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus,
    torch.clamp, torch.clip,
    "relu", "sigmoid", "tanh", "clamp", "clip", "contiguous", "clone", "detach",
], _pointwise_call)
_builtin([F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout], _dropout_call)
_builtin([
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
], _pool_call)
_builtin([F.avg_pool1d, F.avg_pool2d, F.avg_pool3d], _avg_pool_call)
_builtin([torch.flatten, "flatten"], _flatten_call)
_builtin([torch.mean, "mean", "sum"], _reduce_call)
_builtin([torch.reshape, "view", "reshape"], _reshape_call)
for _name, _op, _targets in (
    ("add", operator.add, [operator.add, operator.iadd, torch.add, "add"]),
    ("sub", operator.sub, [operator.sub, operator.isub, torch.sub, "sub"]),
    ("mul", operator.mul, [operator.mul, operator.imul, torch.mul, "mul"]),
    ("div", operator.truediv, [operator.truediv, torch.div, "div"]),
):
    _builtin(_targets, _arithmetic(_name, _op))
_builtin([torch.cat, torch.concat, torch.concatenate], _cat_call)
