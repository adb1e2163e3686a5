"""Turn a sparse model into a portfolio variant: compact, evaluate, export, measure, record.

Pure functions, no Lightning: the :class:`~lightning_shifter.callbacks.compaction.Compaction`
callback calls :func:`add_variant` at every pruning round end, and anyone with a sparse model
(a checkpoint pruned elsewhere, say) can call it directly.

Example::

    >>> import tempfile, torch
    >>> from torch import nn
    >>> from lightning_shifter.portfolio import Portfolio
    >>> from lightning_shifter.variants import add_variant
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> with torch.no_grad():  # half the hidden neurons pruned away entirely
    ...     _ = model[1].weight[:16].zero_(), model[1].bias[:16].zero_()
    >>> portfolio = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 1, 8, 8))
    >>> variant = add_variant(portfolio, model, torch.randn(1, 1, 8, 8), name="mine", round=0)
    >>> variant.params < sum(p.numel() for p in model.parameters())
    True
    >>> restored = Portfolio.open(portfolio.root).load_module("mine")  # the compacted model, no pickle
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_shifter import masks
from lightning_shifter.batches import Unpack, default_unpack, top1_accuracy
from lightning_shifter.compaction import compact, materialized_copy
from lightning_shifter.portfolio import (
    PROGRAM_ACCURACIES,
    FileEntry,
    Portfolio,
    PortfolioError,
    Variant,
    keep_decision,
    validate_variant_name,
)


def variant_name(round: int) -> str:
    """The portfolio name of the variant made at a pruning round: ``round-00``, ``round-01``, ..."""
    return f"round-{round:02d}"


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, batches: Iterable[Any], unpack: Unpack = default_unpack) -> float:
    """Top-1 accuracy (:func:`~lightning_shifter.batches.top1_accuracy`) of a classifier's logits over ``batches``.

    The model runs as it is (put it in eval mode first); inputs go to the device of its parameters.
    """
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    return top1_accuracy(lambda inputs: model(inputs.to(device)), batches, unpack, what="the model",
                         remedy="evaluate such a model yourself and pass its numbers as metrics "
                                "(Compaction(evaluate=False))")


def model_density(model: nn.Module) -> float:
    """Nonzero / total weights over the model's conv and linear layers (the IMP callback's default)."""
    return masks.density(masks.prunable_weights(model).values())


def add_variant(
    portfolio: Portfolio,
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    name: str,
    round: int,
    density: float | None = None,
    metrics: dict[str, float] | None = None,
    check_inputs: Tensor | tuple[Tensor, ...] | None = None,
    val_data: Iterable[Any] | None = None,
    unpack: Unpack = default_unpack,
    keep: str = "all",
) -> Variant:
    """Compact a sparse model and save it into ``portfolio`` as the variant ``name``.

    The model is never modified: a CPU copy in eval mode is compacted (exactly, see
    :func:`lightning_shifter.compaction.compact`), exported with :func:`torch.export.export` at the
    portfolio's input shape and saved as ``<name>/model.pt2``; then its entry (density, params, MACs,
    file size and sha256, accuracies, exactness error, compaction summary) replaces any variant of
    the same name in ``manifest.json``. The old entry is unlisted before its file is overwritten, so
    a crash at any point never leaves a listed variant whose file does not match.

    The ``model.pt2`` bytes depend only on the program (the same model and example give the same
    file in any process), so a variant saved again unchanged keeps its exported ExecuTorch programs
    and their measurements, and :func:`~lightning_shifter.export.export_portfolio` skips it.

    Args:
        portfolio: where to save (:meth:`Portfolio.create` makes or opens one).
        model: the sparse model (pruned weights are zeros).
        example_inputs: one input of the portfolio's shape and dtype (``portfolio.input_shape``).
        name: the variant's name and folder, e.g. ``variant_name(round)``.
        round: the pruning round the model comes from (0 for a model pruned elsewhere).
        density: nonzero / total prunable weights; by default measured over conv and linear weights.
        metrics: numbers to record as they are (``val_data`` adds ``val_acc_sparse`` and
            ``val_acc_compacted`` to them).
        check_inputs: a real batch to verify compaction on, besides random inputs; by default the
            first batch of ``val_data``.
        val_data: re-iterable validation batches (a ``DataLoader`` or a list) to measure the sparse
            and the compacted model's accuracy on.
        unpack: batch -> ``(inputs, targets)``.
        keep: the portfolio's keep policy (:func:`~lightning_shifter.portfolio.keep_decision`):
            ``"all"`` saves every variant; ``"distinct"`` and ``"pareto"`` save it only if no variant
            already kept makes it redundant (else it is recorded in ``portfolio.skipped`` with the
            reason, and nothing is exported), and remove (files included) the kept variants it makes
            redundant.

    Returns:
        The :class:`~lightning_shifter.portfolio.Variant` as measured; it is in the portfolio unless
        the keep policy skipped it (``variant.name not in portfolio``).

    Example::

        >>> import tempfile, torch
        >>> from torch import nn
        >>> from lightning_shifter.portfolio import Portfolio
        >>> from lightning_shifter.variants import add_variant
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> with torch.no_grad():  # half the hidden neurons pruned
        ...     model[0].weight[8:] = 0
        ...     model[0].bias[8:] = 0
        >>> val_data = [(torch.randn(10, 4), torch.randint(0, 3, (10,))) for _ in range(2)]
        >>> portfolio = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 4))
        >>> v = add_variant(portfolio, model, torch.randn(1, 4), name="round-01", round=1,
        ...                 val_data=val_data, metrics={"epoch": 3})
        >>> round(v.density, 3), v.params, sorted(v.files)
        (0.714, 67, ['pt2'])
        >>> sorted(v.metrics)
        ['epoch', 'val_acc_compacted', 'val_acc_sparse']
        >>> v.metrics["val_acc_compacted"] == v.metrics["val_acc_sparse"]  # compaction is exact
        True
        >>> portfolio.names
        ['round-01']
    """
    validate_variant_name(name)
    keep_decision([], Variant(name, 0, 1.0, 0, 0), keep)  # an unknown policy fails before any work
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ValueError(f"round must be a non-negative integer, got {round!r}")
    example_inputs = _check_example(portfolio, example_inputs)
    if val_data is not None and iter(val_data) is val_data:
        raise ValueError(
            "val_data is a one-shot iterator but it is read more than once: pass a DataLoader or a list of batches"
        )

    measured = {key: float(value) for key, value in (metrics or {}).items()}
    # pruning hooks / parametrizations made permanent: plain deepcopy refuses their derived tensors
    sparse = materialized_copy(model).cpu().eval()
    if density is None:
        density = model_density(sparse)
    if val_data is not None:
        measured["val_acc_sparse"] = evaluate_accuracy(sparse, val_data, unpack)
        if check_inputs is None:
            check_inputs = unpack(next(iter(val_data)))[0]
    if check_inputs is not None:
        check_inputs = tuple(t.cpu() for t in _as_tuple(check_inputs))
    with torch.no_grad():
        result = compact(sparse, example_inputs, check_inputs=check_inputs)
    compacted = result.module.eval()
    if val_data is not None:
        measured["val_acc_compacted"] = evaluate_accuracy(compacted, val_data, unpack)
    variant = Variant(
        name=name,
        round=round,
        density=float(density),
        params=result.report.params_after,
        macs=result.report.macs_after,
        metrics=measured,
        exactness_error=float(result.report.max_abs_error),
        compaction=result.report.summary(),
    )
    write: Callable[[], dict[str, FileEntry]] = dict
    if keep_decision(portfolio.variants, variant, keep).keep:  # a skipped variant is never exported
        data = _program_bytes(torch.export.export(compacted, example_inputs))
        previous = portfolio[name] if name in portfolio else None
        if previous is not None and _same_program(portfolio, previous, data):
            # the same model.pt2: its programs, their accuracies and timings stay valid
            variant.files, variant.programs = previous.files, previous.programs
            variant.host, variant.devices = previous.host, previous.devices
            kept = {k: v for k, v in previous.metrics.items() if k in PROGRAM_ACCURACIES.values()}
            variant.metrics = {**kept, **measured}
        else:
            def write() -> dict[str, FileEntry]:
                return {"pt2": portfolio.write_file(name, "pt2", data)}
    portfolio.remove_stale_temporaries()  # of writers killed before
    # a listed variant of this name is unlisted before its files are overwritten: a crash in between
    # leaves it missing (and redone on resume), never listed with a file that fails its sha256
    portfolio.admit(variant, keep, write)
    return variant


def _program_bytes(program: torch.export.ExportedProgram) -> bytes:
    """The ``.pt2`` file of ``program``, the same bytes for the same program in any process."""
    # Node provenance ("from_node") names the graphs a node passed through by their id(): memory
    # addresses that differ from run to run. Nothing downstream reads it.
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("from_node", None)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _same_program(portfolio: Portfolio, variant: Variant, data: bytes) -> bool:
    """Whether ``variant`` is listed with exactly this ``model.pt2`` and all its files are intact."""
    entry = variant.files.get("pt2")
    if entry is None or entry.sha256 != hashlib.sha256(data).hexdigest():
        return False
    try:
        for role in variant.files:
            portfolio.verify_file(variant.name, role)
    except PortfolioError:
        return False
    return True


def _as_tuple(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)


def _check_example(portfolio: Portfolio, example_inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    inputs = _as_tuple(example_inputs)
    if len(inputs) != 1 or not isinstance(inputs[0], Tensor):
        raise ValueError(
            f"a portfolio variant takes exactly one input tensor, got {len(inputs)} input(s): wrap a model "
            "with several inputs in a module that takes one"
        )
    example = inputs[0].detach().cpu()
    dtype = str(example.dtype).removeprefix("torch.")
    if tuple(example.shape) != portfolio.input_shape or dtype != portfolio.input_dtype:
        raise PortfolioError(
            f"the example input is {list(example.shape)} {dtype} but the "
            f"portfolio at {portfolio.root} holds models for {list(portfolio.input_shape)} {portfolio.input_dtype}: "
            "pass an example of the portfolio's input or use another portfolio folder"
        )
    return (example,)
