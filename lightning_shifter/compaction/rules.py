"""Channel rules: what each op of a traced model does to channels.

The analysis (:mod:`.graph`) asks this registry for the rule of every node that computes a tensor:
a ``call_module`` node by its module's type (the first class of its method resolution order that
has a rule, so a rule for a class covers its subclasses), a ``call_function`` node by its
function, a ``call_method`` node by the method's name. A rule is called as ``rule(analysis,
node)`` and records, through :class:`~.graph.Analysis`, which channels the node's result holds.
The built-in rules below (convolutions, linear layers, batch-norms, activations, pooling,
dropout, flatten and flattening views, means, arithmetic, concatenation) are registered exactly as
a user's are; a rule a user registers takes precedence over a built-in one for the same target. An op without a rule keeps every channel it touches, and its
result counts as varying and used (it is named in the report's ``unsupported``): never wrong,
only less small.

A rule only decides what the analysis believes; :func:`~lightning_shifter.compaction.compact`
still checks the compacted model against the original, so a rule that misdescribes its op makes
compaction fail, naming the rule, rather than return a wrong model.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

if TYPE_CHECKING:
    from lightning_shifter.compaction.graph import Analysis, Channels

__all__ = ["ChannelRule"]

ChannelRule = Callable[["Analysis", fx.Node], None]
"""A rule: ``rule(analysis, node)`` records what ``node``'s result holds, channel by channel."""


class ChannelRuleError(Exception):
    """A rule registered by the user failed."""


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
    table = "methods" if node.op == "call_method" else "functions"
    try:
        if node.target in getattr(_USER, table):
            return getattr(_USER, table)[node.target], True
        rule = getattr(_BUILTIN, table).get(node.target)
    except TypeError:  # an unhashable callable: no rule can name it
        return None
    return None if rule is None else (rule, False)


def describe(rule: ChannelRule) -> str:
    return getattr(rule, "__qualname__", None) or repr(rule)


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
