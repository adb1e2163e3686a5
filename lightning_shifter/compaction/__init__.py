"""Exact compaction: turn a sparse model into a smaller dense one that computes the same function.

``compact(model, example_inputs)`` traces an eval-mode copy of ``model`` with torch.fx, interprets
it channel by channel (:mod:`.graph`), decides which channel sets can go without changing the
function (:mod:`.removal`), slices the copy's parameters (:mod:`.rewrite`) and checks the result
against the model on the example, on a random input of the same shapes and on ``check_inputs``
(:mod:`.verify`). Outputs must agree within ``tolerance * max(1, max|model(x)|)``, NaN and infinity
only with themselves at the same places. When float32 rounding alone exceeds that (deep networks
whose own float32 result differs from float64 by as much), the same removals are applied to a
float64 copy, which must match the model run in float64 within ``tolerance * 1e-5`` (an exact
compaction differs there by float64 rounding, ~1e-12), and the float32 difference must stay within
the model's own float32 rounding. A compacted model that fails is never returned:
:class:`CompactionError` names the first diverging layer instead.

What each op does to channels comes from a registry of channel rules (:mod:`.rules`). An op without
a rule keeps every channel it touches; :func:`register_channel_rule` teaches the analysis a new one
(a :class:`ChannelWise` rule for a custom per-channel module, function or tensor method), and a wrong
rule is caught by the same check, naming the rule.

The input model is never modified: the copy owns its tensors, every run gets its own copy of the
inputs (a model may change them in place) and starts from the same buffer state, so a forward that
updates a buffer (a counter, a running statistic) changes neither the caller's model nor the
comparison, and the result holds the model's state as it was.

Speed: the copy is structural (new module objects, cloned tensors, no deep copy of anything else),
the model runs twice before and twice after (example and random input; a third time each for
``check_inputs``), and MACs are computed from the recorded shapes rather than under a flop counter.
:mod:`.original` restates the original DNNShifter rule for comparison (the demo reports both,
``bench/compaction.py`` measures both). :func:`channel_sets` exposes which channels of different
layers can only go together (for pruning criteria that weaken such sets as a whole).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
    ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    >>> with torch.no_grad():  # three dead filters, batch-norm affine masked as IMP does
    ...     for module in (model[0], model[1]):
    ...         module.weight[:3] = 0
    ...         module.bias[:3] = 0
    >>> result = compact(model, torch.randn(1, 3, 16, 16))
    >>> result.module.get_submodule("0").out_channels, result.report.removed()["zero"]
    (5, 3)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize, prune

from lightning_shifter.compaction.graph import ChannelGraph, analyse
from lightning_shifter.compaction.removal import Removal, decide
from lightning_shifter.compaction.report import (
    CompactionReport,
    LayerReport,
    count_macs,
    count_params,
    layer_macs,
    layer_reports,
    merge_layers,
)
from lightning_shifter.compaction.rewrite import rewrite
from lightning_shifter.compaction.rules import (
    ChannelRuleError,
    ChannelWise,
    leaf_module_types,
    register_channel_rule,
    unregister_channel_rule,
    wrapped_functions,
)
from lightning_shifter.compaction.sets import LayerChannelSets, channel_sets
from lightning_shifter.compaction.verify import error, first_divergence, leaves, random_like, to_float64
from lightning_shifter.errors import ShifterError

__all__ = [
    "ChannelWise", "CompactionError", "CompactionReport", "CompactionResult", "LayerChannelSets", "LayerReport",
    "channel_sets", "compact", "count_macs", "materialized_copy", "register_channel_rule", "unregister_channel_rule",
]

RANDOM_CHECKS = 1  # random inputs verified besides the example and ``check_inputs``
# the float64 check allows tolerance * this: float64 rounds 2^29 (5e8) times finer than float32, so an
# exact compaction stays orders of magnitude below it while any error float32 could see stays above
FLOAT64_TOLERANCE_RATIO = 1e-5
# the compacted model's float32 rounding may exceed the tolerance by this many times the model's own
ROUNDING_FACTOR = 10.0


class CompactionError(ShifterError):
    """The model cannot be compacted as asked: untraceable, wrong inputs, or a failed check."""


@dataclass
class CompactionResult:
    """What :func:`compact` returns: the compacted ``module`` and the ``report`` of what it removed.

    ``module`` is a ``torch.fx.GraphModule`` in eval mode that owns its tensors (changing it never
    reaches the input model); ``report`` is a :class:`CompactionReport` (sizes, MACs, channels per
    layer, the worst error seen while verifying), whose :meth:`~CompactionReport.summary` is what a
    portfolio manifest records.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> with torch.no_grad():  # 24 of the 32 hidden neurons never fire
        ...     model[0].weight[8:] = 0
        ...     model[0].bias[8:] = 0
        >>> result = compact(model, torch.randn(8, 16))
        >>> result.module.training, result.report.channels_before, result.report.channels_after
        (False, 36, 12)
        >>> result.report.removed()
        {'zero': 24, 'unused': 0, 'folded': 0}
        >>> summary = result.report.summary()  # JSON-serialisable
        >>> summary["params_before"], summary["params_after"]
        (676, 172)
    """

    module: nn.Module
    report: CompactionReport


def _as_inputs(value: Any, name: str) -> tuple[Tensor, ...]:
    inputs = value if isinstance(value, tuple) else (value,)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise CompactionError(
            f"{name} must be a tensor or a tuple of tensors (the model's positional inputs), "
            f"got {type(value).__name__}"
        )
    return tuple(x.detach() for x in inputs)


def _has_derived_tensors(module: nn.Module) -> bool:
    """Whether a module may recompute tensors from others at each call, as pruning hooks, weight-norm
    (forward pre-hooks) and parametrizations do: such a module is deep-copied and made permanent."""
    return bool(module._forward_pre_hooks) or "parametrizations" in module._modules


def materialized_copy(module: nn.Module) -> nn.Module:
    """A deep copy of a module with ``torch.nn.utils.prune`` hooks and parametrizations made permanent."""
    # tensors computed by pruning hooks or weight-norm are not leaves and refuse deepcopy;
    # they are recomputed from their originals below, so a detached copy stands in for them
    memo = {
        id(value): value.detach().clone()
        for inner in module.modules()
        for value in vars(inner).values()
        if isinstance(value, Tensor) and not value.is_leaf
    }
    private = copy.deepcopy(module, memo)
    for inner in private.modules():
        for hook in list(inner._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(inner, hook._tensor_name)
        if parametrize.is_parametrized(inner):
            for name in list(inner.parametrizations):
                parametrize.remove_parametrizations(inner, name, leave_parametrized=True)
    return private


def _structural_copy(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """A copy of the module tree that owns its tensors (tied tensors stay tied) and shares the rest."""
    if id(module) not in memo:
        if _has_derived_tensors(module):
            memo[id(module)] = materialized_copy(module)
        else:
            clone = object.__new__(type(module))  # not type's __new__: GraphModule makes a new class there
            # own containers (parameters, buffers, hooks, ...), so that changing the copy never
            # reaches the input
            clone.__dict__ = {
                key: value.copy() if isinstance(value, (dict, list, set)) else value
                for key, value in vars(module).items()
            }
            memo[id(module)] = clone
            for store in (clone._parameters, clone._buffers, clone.__dict__):
                for name, value in store.items():
                    if isinstance(value, Tensor):
                        store[name] = _own_copy(value, memo)
            for name, child in module._modules.items():
                clone._modules[name] = None if child is None else _structural_copy(child, memo)
    return memo[id(module)]


def _own_copy(value: Tensor, memo: dict[int, Any]) -> Tensor:
    if id(value) not in memo:
        data = value.detach().clone()
        memo[id(value)] = nn.Parameter(data, value.requires_grad) if isinstance(value, nn.Parameter) else data
    return memo[id(value)]


def _working_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` to trace and rewrite; it owns its tensors."""
    return _structural_copy(model, {}).eval()


class _Tracer(fx.Tracer):
    """torch.fx's default tracer, except that modules and functions with a channel rule registered
    by the user stay one call in the graph (their rule describes them as a whole)."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=wrapped_functions())
        self.leaf_types = leaf_module_types()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
        raise CompactionError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "Compaction needs a graph of the model: remove Python control flow that depends on "
            "tensor values (if/for over tensor contents) from forward()."
        ) from exc


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.meta: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.meta[n] = result.shape if isinstance(result, Tensor) else result
        return result


def _record(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> tuple[dict[fx.Node, Any], Any]:
    """Each node's result shape (or non-tensor value) on the example, and the output."""
    recorder = _ShapeRecorder(gm)
    [output] = _runs(gm, [inputs], "example_inputs", recorder.run)
    return recorder.meta, output


def _runs(gm: nn.Module, inputs: list[tuple[Tensor, ...]], what: str, fn: Any = None) -> list[Any]:
    """``gm``'s output on each of ``inputs``: every run on its own copy of the inputs and from the
    buffer state ``gm`` has now, which is restored at the end."""
    saved = [(module, dict(module._buffers)) for module in gm.modules() if module._buffers]
    state = {(id(module), name): value.clone() for module, buffers in saved for name, value in buffers.items()
             if value is not None}
    outputs = []
    try:
        for x in inputs:
            outputs.append(_run(fn or gm, tuple(t.clone() for t in x), what))
            for module, buffers in saved:  # also drops buffers a forward added
                module._buffers.clear()
                module._buffers.update({name: None if value is None else state[(id(module), name)].clone()
                                        for name, value in buffers.items()})
    finally:
        for module, buffers in saved:
            module._buffers.clear()
            module._buffers.update({name: None if value is None else state[(id(module), name)]
                                    for name, value in buffers.items()})
    return outputs


def _run(fn: Any, inputs: tuple[Tensor, ...], what: str) -> Any:
    try:
        with torch.no_grad():
            return fn(*inputs)
    except Exception as exc:
        shapes = ", ".join(f"{tuple(x.shape)} {x.dtype}" for x in inputs)
        message = str(exc).split("\n\n")[0]  # fx appends its own traceback after a blank line
        raise CompactionError(
            f"the model fails on {what} ({shapes}): {type(exc).__name__}: {message}. "
            "Pass inputs of the shape and dtype the model expects, e.g. one batch from its dataloader."
        ) from exc


def _analyse(gm: fx.GraphModule, meta: dict[fx.Node, Any]) -> ChannelGraph:
    try:
        return analyse(gm, meta)
    except ChannelRuleError as exc:
        raise CompactionError(str(exc)) from exc


def _user_rules(passes: list[tuple[ChannelGraph, Removal]]) -> str:
    """Where the analysis relied on rules registered by the user, for an error message ('' if nowhere)."""
    applied = list(dict.fromkeys(where for graph, _ in passes for where in graph.user_rules))
    if not applied:
        return ""
    return (f"It relied on channel rules registered by the user: {'; '.join(applied)}. A rule that misdescribes "
            "its op makes compaction inexact: fix it, or unregister it (unregister_channel_rule) to keep that "
            "op's channels as they are.")


def _count_macs(gm: fx.GraphModule, inputs: tuple[Tensor, ...]) -> int:
    [macs] = _runs(gm, [inputs], "example_inputs", lambda *x: count_macs(gm, x))
    return macs


def _float64_check(model: nn.Module, passes: list[tuple[ChannelGraph, Removal]], checks: list[tuple[Tensor, ...]],
                   references: list[list[Tensor]], results: list[list[Tensor]]) -> tuple[float, float, float, float]:
    """The same removals applied to a float64 copy of ``model``: (max |compacted - model| in float64,
    its scale, max |model in float32 - model in float64| (the model's own rounding), max |compacted in
    float32 - model in float64|). Raises CompactionError when the model cannot run in float64."""
    gm = _trace(_working_copy(model)).double()
    inputs = [to_float64(x) for x in checks]
    truth = [leaves(y) for y in _runs(gm, inputs, "the float64 check")]
    for graph, removal in passes:
        meta, _ = _record(gm, inputs[0])
        again = _analyse(gm, meta)
        if again.num_ids != graph.num_ids or len(again.layers) != len(graph.layers):
            raise CompactionError("the float64 copy traces to another graph")
        rewrite(gm, again, removal)
    compacted = [leaves(y) for y in _runs(gm, inputs, "the float64 check after compaction")]
    err64, scale = max((error(t, c) for t, c in zip(truth, compacted)), key=lambda e: e[0])
    own_rounding = max(error(t, r)[0] for t, r in zip(truth, references))
    ours = max(error(t, r)[0] for t, r in zip(truth, results))
    return err64, scale, own_rounding, ours


def compact(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    check_inputs: Tensor | tuple[Tensor, ...] | None = None,
    tolerance: float = 1e-5,
) -> CompactionResult:
    """Return a smaller model computing the same function as ``model`` in eval mode, and a report.

    The result is exact for inputs of the shapes of ``example_inputs`` (the shapes a portfolio is
    exported for). It may differ at other spatial sizes: a kernel tap that only ever meets zero
    padding at this size (a 3x3 convolution of a 1x1 map reads its centre only) counts as absent.

    Args:
        model: any ``nn.Module`` that torch.fx can trace; it is never modified.
        example_inputs: the model's positional inputs (their shapes define the check).
        check_inputs: a real batch to verify on as well, e.g. from the validation set.
        tolerance: allowed ``max|compacted(x) - model(x)|`` relative to ``max(1, max|model(x)|)``.

    Raises:
        CompactionError: untraceable model, inputs the model rejects, or a compacted model
            that does not match (naming the first diverging layer).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        ...                       nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        >>> with torch.no_grad():  # magnitude pruning left ten filters of the first conv all zero
        ...     model[0].weight[6:] = 0
        ...     model[0].bias[6:] = 0
        >>> x = torch.randn(2, 3, 12, 12)
        >>> result = compact(model, x[:1], check_inputs=x)
        >>> result.module.get_submodule("0").out_channels, result.module.get_submodule("2").in_channels
        (6, 6)
        >>> result.report.params_after < result.report.params_before
        True
        >>> with torch.no_grad():  # the same function, within the tolerance
        ...     torch.allclose(result.module(x), model.eval()(x), atol=1e-5)
        True
    """
    started = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise CompactionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not tolerance > 0:
        raise CompactionError(f"tolerance must be positive, got {tolerance}")
    inputs = _as_inputs(example_inputs, "example_inputs")
    checks = [inputs] + [random_like(inputs, seed) for seed in range(RANDOM_CHECKS)]
    if check_inputs is not None:
        checks.append(_as_inputs(check_inputs, "check_inputs"))
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - since
        return now

    mark = time.perf_counter()
    gm = _trace(_working_copy(model))
    mark = lap("copy_and_trace", mark)
    params_before = count_params(gm)
    meta, output = _record(gm, inputs)
    references = [leaves(output)] + [leaves(y) for y in _runs(gm, checks[1:], "the verification inputs")]
    mark = lap("reference", mark)

    # A grouped convolution left with one group is a plain one, whose channels can go one by one:
    # then analyse again, so that compacting the result would remove nothing more.
    passes: list[tuple[ChannelGraph, Removal]] = []
    while True:
        graph = _analyse(gm, meta)
        if not passes:
            # convolutions and linear layers are the only ops with MACs that the analysis
            # understands; anything else (a user's op included) is counted under a flop counter
            by_layers = not graph.unsupported and not graph.user_rules
            macs_before = layer_macs(graph, meta) if by_layers else _count_macs(gm, inputs)
        removal = decide(graph)
        mark = lap("analysis", mark)
        ungrouped = [layer for layer in graph.layers if layer.groups > 1]
        rewrite(gm, graph, removal)
        passes.append((graph, removal))
        mark = lap("rewrite", mark)
        if not any(layer.module.groups == 1 for layer in ungrouped):
            break
        meta, _ = _record(gm, inputs)

    try:
        results = [leaves(y) for y in _runs(gm, checks, "the verification inputs after compaction")]
    except CompactionError as exc:
        if not _user_rules(passes):
            raise
        cause = exc.__cause__
        message = str(cause).split("\n\n")[0]  # fx appends its own traceback after a blank line
        raise CompactionError(f"the compacted model fails to run: {type(cause).__name__}: {message}. {_user_rules(passes)}") from exc
    errors = [error(reference, result) for reference, result in zip(references, results)]
    worst = max(err for err, _ in errors)
    float64_error = None
    failed = [(err, scale, x) for (err, scale), x in zip(errors, checks) if not err <= tolerance * scale]
    if failed:  # rounding or a real difference? the same removals in float64 tell
        err, scale, x = failed[0]
        problem = f"the compacted model differs from the original by {err:.3g} (allowed {tolerance * scale:.3g})"
        try:
            float64_error, scale64, own_rounding, ours = _float64_check(model, passes, checks, references, results)
        except CompactionError as exc:
            float64_error, scale64, ours, own_rounding = math.inf, 1.0, math.inf, 0.0
            detail = f"it cannot run in float64 to tell rounding from error: {exc}"
        else:
            detail = (f"in float64 it differs by {float64_error:.3g} (allowed {tolerance * FLOAT64_TOLERANCE_RATIO * scale64:.3g}), "
                      f"its float32 rounding is {ours:.3g} against the original's own {own_rounding:.3g}")
        if not (float64_error <= tolerance * FLOAT64_TOLERANCE_RATIO * scale64
                and ours <= tolerance * scale + ROUNDING_FACTOR * own_rounding):
            where = first_divergence(_trace(_working_copy(model)), gm, passes, x, tolerance)
            if not all(bool(torch.isfinite(t).all()) for ref in references for t in ref if t.is_floating_point()):
                cause = "The original model outputs NaN or infinity: check its weights and inputs."
            else:
                cause = (_user_rules(passes) or "This is a bug in compaction for this architecture: "
                         "please report it with the model definition.")
            raise CompactionError(f"{problem}; {detail}; first divergence: {where}. {cause}")
    mark = lap("verify", mark)
    by_layers = not graph.unsupported and not graph.user_rules
    macs_after = layer_macs(graph, meta) if by_layers else _count_macs(gm, inputs)
    report = CompactionReport(
        layers=merge_layers([layer_reports(g, r) for g, r in passes]),
        params_before=params_before,
        params_after=count_params(gm),
        macs_before=macs_before,
        macs_after=macs_after,
        seconds=0.0,
        max_abs_error=worst,
        unsupported=passes[0][0].unsupported,
        iterations=sum(r.iterations for _, r in passes),
        timings=timings,
        float64_error=float64_error,
    )
    lap("report", mark)
    report.seconds = time.perf_counter() - started
    return CompactionResult(gm, report)
