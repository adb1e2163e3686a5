"""Lower every variant of a portfolio to ExecuTorch programs (XNNPACK; fp32 and int8) and check them.

For each variant's ``model.pt2`` this writes ``model.pte`` (fp32) and optionally ``model_int8.pte``
(PT2E post-training quantization with XNNPACK's quantizer, calibrated on the user's data). A program
is listed in the manifest only after it passed its check: fp32 must match the PyTorch variant within
a tight tolerance on the same inputs, int8 must keep its accuracy on validation data within a given
drop (or agree with the PyTorch variant's top-1 on the check inputs when no labels are given).
Manifest entries record sizes, sha256, accuracies (``val_acc_fp32``, ``val_acc_int8``), where each
program comes from (``programs[precision] = {source_sha256, portable_ops}``) and host timings
(``host[precision] = {load_ms, p50_ms, p90_ms}``).

Re-running is cheap: a program whose ``.pt2`` is unchanged (by sha256) since it was exported and
whose file still matches its hash is skipped; a program whose file is damaged is exported again.
Variants can be exported in parallel processes (``workers``); only this process writes the manifest.

A ``.pt2`` is loaded only after its archive passed :func:`lightning_shifter.pt2.check_archive` (no
pickle, no code) and its sha256; one that fails, or that torch cannot load or run, fails that
variant's programs, not the export. Every write is ordered so that a kill at any point leaves a
portfolio that opens: a program is unlisted (manifest saved) before its file is replaced or
deleted, and listed only once its new file is complete.

Example (``portfolio/`` made by the Compaction callback, loaders of the training data)::

    import rich
    from lightning_shifter import export_portfolio

    report = export_portfolio("portfolio/", precisions=("fp32", "int8"),
                              calibration_data=train_loader, validation_data=val_loader)
    rich.print(report.table())
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_shifter.batches import batch_inputs, class_logits, default_unpack, example_input, top1_accuracy
from lightning_shifter.errors import ShifterError
from lightning_shifter.portfolio import PRECISIONS, PROGRAM_ACCURACIES, FileEntry, Portfolio, PortfolioError
from lightning_shifter.pt2 import load_program
from lightning_shifter.runtime import measure_program

log = logging.getLogger(__name__)

# nodes that remain outside the delegate in every program and are not computation
_GLUE_OPS = {"executorch_call_delegate", "getitem"}


class ExportError(ShifterError, RuntimeError):
    """The export cannot go on (e.g. the disk is full); what was recorded before stays valid."""


@dataclass
class ProgramReport:
    """What happened to one program (a variant at one precision)."""

    name: str
    precision: str
    status: str  # "exported", "skipped" or "failed"
    seconds: float = 0.0
    error: str | None = None
    bytes: int | None = None
    max_abs_error: float | None = None  # fp32 vs the PyTorch variant, on the check inputs
    accuracy: float | None = None  # on the validation data
    reference_accuracy: float | None = None  # the PyTorch variant's, on the same data
    portable_ops: list[str] = field(default_factory=list)  # ops XNNPACK did not take


@dataclass
class ExportReport:
    """Every program's outcome, the wall time of the whole export and the worker count used."""

    programs: list[ProgramReport]
    seconds: float
    workers: int

    def _with(self, status: str) -> list[ProgramReport]:
        return [p for p in self.programs if p.status == status]

    @property
    def exported(self) -> list[ProgramReport]:
        return self._with("exported")

    @property
    def skipped(self) -> list[ProgramReport]:
        return self._with("skipped")

    @property
    def failed(self) -> list[ProgramReport]:
        return self._with("failed")

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "workers": self.workers, "programs": [asdict(p) for p in self.programs]}

    def table(self) -> Any:
        """A ``rich`` table of the outcomes (print it with ``rich.print``)."""
        from rich.table import Table

        table = Table(title=f"ExecuTorch export: {self.seconds:.1f} s, {self.workers} worker(s)")
        for column in ("variant", "precision", "status", "seconds", "KiB", "max |err|", "accuracy", "note"):
            table.add_column(column)
        for p in self.programs:
            note = p.error or (f"portable ops: {', '.join(p.portable_ops)}" if p.portable_ops else "")
            table.add_row(p.name, p.precision, p.status, f"{p.seconds:.2f}",
                          "" if p.bytes is None else f"{p.bytes / 1024:.1f}",
                          "" if p.max_abs_error is None else f"{p.max_abs_error:.1e}",
                          "" if p.accuracy is None else f"{p.accuracy:.4f}", note)
        return table


# ---------------------------------------------------------------------------------------- lowering
def lower(program: torch.export.ExportedProgram, precision: str = "fp32",
          calibration_inputs: Sequence[torch.Tensor] = ()) -> tuple[bytes, list[str]]:
    """Lower an exported program with the XNNPACK delegate; returns the ``.pte`` bytes and the ops
    left to ExecuTorch's portable kernels (empty when XNNPACK took everything).

    ``int8`` quantizes first (PT2E, XNNPACK's symmetric per-channel config), calibrated by running
    ``calibration_inputs`` through the observed model.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision == "int8":
        program = _quantize(program, calibration_inputs)
    elif precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    leftover = sorted({
        getattr(node.target, "__name__", str(node.target))
        for node in edge.exported_program().graph.nodes
        if node.op == "call_function" and getattr(node.target, "__name__", "") not in _GLUE_OPS
    })
    return edge.to_executorch().buffer, leftover


def _quantize(program: torch.export.ExportedProgram, calibration_inputs: Sequence[torch.Tensor]) -> torch.export.ExportedProgram:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration_inputs:
        raise ValueError("int8 needs calibration inputs: pass calibration_data (batches of the user's data)")
    patterns = XNNPACKQuantizer.SUPPORTED_PATTERNS
    if not _has_training_batch_norm(program):
        # conv-bn patterns only match training-mode batch norm (QAT graphs); in eval graphs
        # prepare_pt2e folds batch norm into the conv first. Tracing those patterns costs ~2 s per
        # program and the output is byte-identical without them.
        patterns = [p for p in patterns if "_bn" not in p.name]
    quantizer_class = type("EvalXNNPACKQuantizer", (XNNPACKQuantizer,), {"SUPPORTED_PATTERNS": patterns})
    quantizer = quantizer_class().set_global(get_symmetric_quantization_config(is_per_channel=True))
    observed = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for x in calibration_inputs:
            observed(x)
    return torch.export.export(convert_pt2e(observed), (calibration_inputs[0],))


def _has_training_batch_norm(program: torch.export.ExportedProgram) -> bool:
    # aten.batch_norm and _native_batch_norm_legit take `training` as their 6th argument
    return any("batch_norm" in str(node.target) and "no_training" not in str(node.target)
               and (len(node.args) <= 5 or node.args[5] is not False)
               for node in program.graph.nodes if node.op == "call_function")


# ---------------------------------------------------------------------------------------- one variant
@dataclass
class _Job:
    root: str
    name: str
    precisions: list[str]
    calibration: list[torch.Tensor]
    validation: list[tuple[torch.Tensor, torch.Tensor]]
    check_inputs: list[torch.Tensor]
    fp32_tolerance: float
    int8_max_accuracy_drop: float
    threads: int | None = None


@dataclass
class _Outcome:
    report: ProgramReport
    entry: FileEntry | None = None


_NOT_A_CLASSIFIER = "export without validation_data for models that are not classifiers"


def _top1(outputs: Sequence[torch.Tensor], what: str) -> torch.Tensor:
    return class_logits(outputs, what, _NOT_A_CLASSIFIER).argmax(dim=1)


def _accuracy(run: Any, validation: Sequence[tuple[torch.Tensor, torch.Tensor]], what: str) -> float | None:
    return top1_accuracy(run, validation, what=what, remedy=_NOT_A_CLASSIFIER) if validation else None


def _export_variant(job: _Job) -> list[_Outcome]:
    """Lower, check and write one variant's programs (runs in a worker process or in-process)."""
    from executorch.runtime import Runtime

    if job.threads:
        torch.set_num_threads(job.threads)
    portfolio = Portfolio.open(job.root, verify=False)

    def run_reference(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            out = reference(x)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    try:
        entry = portfolio[job.name].files["pt2"]
        program = load_program(portfolio.verify_file(job.name, "pt2", sha256=False), sha256=entry.sha256,
                               what=f"variant {job.name!r} model.pt2")
        reference = program.module()
        expected = [run_reference(x) for x in job.check_inputs]
    except PortfolioError as err:  # refused, damaged or tampered with: this variant only
        return [_Outcome(ProgramReport(job.name, p, "failed", error=str(err))) for p in job.precisions]
    except Exception as err:  # a program torch loads but cannot run on the portfolio's input
        error = (f"variant {job.name!r} model.pt2 does not run on the portfolio's input ({type(err).__name__}: "
                 f"{_first_line(err)}); recreate the variant")
        return [_Outcome(ProgramReport(job.name, p, "failed", error=error)) for p in job.precisions]
    reference_accuracy = _accuracy(run_reference, job.validation, "the PyTorch variant")
    outcomes = []
    for precision in job.precisions:
        start = time.perf_counter()
        report = ProgramReport(job.name, precision, "failed", reference_accuracy=reference_accuracy)
        try:
            buffer, report.portable_ops = lower(program, precision, job.calibration)
        except Exception as err:  # any lowering failure only fails this program
            report.error = f"lowering failed: {type(err).__name__}: {_first_line(err)}"
            report.seconds = time.perf_counter() - start
            outcomes.append(_Outcome(report))
            continue
        try:
            method = Runtime.get().load_program(buffer).load_method("forward")

            def run_program(x: torch.Tensor, method: Any = method) -> list[torch.Tensor]:
                return list(method.execute([x]))

            report.error = _check(precision, run_program, run_reference, job, expected, report)
        except RuntimeError as err:
            report.error = f"the ExecuTorch runtime cannot run the program ({_first_line(err)})"
            if report.portable_ops:
                report.error += (f"; ops outside the XNNPACK delegate: {', '.join(report.portable_ops)}: "
                                 "they may lack a kernel in this runtime, replace them in the model")
        entry = None
        if report.error is None:
            entry = _write(portfolio, job.name, precision, buffer)
            report.status, report.bytes = "exported", entry.bytes
        report.seconds = time.perf_counter() - start
        outcomes.append(_Outcome(report, entry))
    return outcomes


def _check(precision: str, run_program: Any, run_reference: Any, job: _Job, expected: list[list[torch.Tensor]],
           report: ProgramReport) -> str | None:
    """Compare a program with the PyTorch variant; returns why it fails, or None."""
    if precision == "fp32":
        worst = 0.0
        for x, want in zip(job.check_inputs, expected):
            got = run_program(x)
            if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
                return f"outputs {[list(g.shape) for g in got]} differ in shape from the PyTorch variant's {[list(w.shape) for w in want]}"
            for g, w in zip(got, want):
                error = float((g.float() - w.float()).abs().max())
                worst = max(worst, error)
                limit = job.fp32_tolerance * max(1.0, float(w.float().abs().max()))
                if not error <= limit:  # also catches NaN
                    report.max_abs_error = error
                    return f"max |program - PyTorch| = {error:.3g} exceeds the tolerance {limit:.3g}"
        report.max_abs_error = worst
        report.accuracy = _accuracy(run_program, job.validation, "the program")
        return None
    report.accuracy = _accuracy(run_program, job.validation, "the program")
    if report.accuracy is not None:
        drop = report.reference_accuracy - report.accuracy
        if drop > job.int8_max_accuracy_drop:
            return (f"int8 accuracy {report.accuracy:.4f} is {drop:.4f} below the PyTorch variant's "
                    f"{report.reference_accuracy:.4f} (allowed drop {job.int8_max_accuracy_drop}); calibrate "
                    "on more representative data or raise int8_max_accuracy_drop")
        return None
    # no labels: compare top-1 with the PyTorch variant on real (calibration) inputs
    agree = [bool((_top1(run_program(x), "the program") == _top1(run_reference(x), "the PyTorch variant")).all())
             for x in job.calibration]
    agreement = sum(agree) / len(agree)
    if agreement < 1.0 - job.int8_max_accuracy_drop:
        return (f"int8 top-1 agrees with the PyTorch variant on {agreement:.0%} of the calibration inputs "
                f"(need {1.0 - job.int8_max_accuracy_drop:.0%}); give validation_data or better calibration data")
    return None


def _write(portfolio: Portfolio, name: str, precision: str, buffer: bytes) -> FileEntry:
    try:
        return portfolio.write_file(name, precision, buffer)
    except OSError as err:
        raise _disk_error(err, portfolio.root / name, len(buffer)) from None


def _disk_error(err: OSError, where: Path, needed: int) -> Exception:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExportError(
            f"no space left on the device holding {where} (needed about {needed / 2**20:.1f} MiB more): free "
            "some space and run the export again; programs already recorded are kept and skipped"
        )
    return ExportError(f"cannot write to {where}: {err}; check the folder's permissions and the disk")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------- portfolio
def export_portfolio(
    portfolio_dir: str | os.PathLike,
    precisions: Sequence[str] = PRECISIONS,
    calibration_data: Iterable[Any] | None = None,
    validation_data: Iterable[Any] | None = None,
    *,
    variants: Sequence[str] | None = None,
    workers: int = 1,
    force: bool = False,
    fp32_tolerance: float = 1e-4,
    int8_max_accuracy_drop: float = 0.02,
    calibration_batches: int = 32,
    check_inputs: int = 4,
    measure: bool = True,
    warmup: int = 3,
    runs: int = 20,
) -> ExportReport:
    """Export every variant of a portfolio to ExecuTorch, check each program and record it.

    Args:
        portfolio_dir: a portfolio with a ``model.pt2`` per variant (the Compaction callback's output).
            Each ``model.pt2`` is checked (archive and sha256) before it is loaded, each program
            before it is skipped; a damaged program is exported again, a damaged ``model.pt2``
            fails its variant.
        precisions: ``"fp32"`` and/or ``"int8"``.
        calibration_data: batches (tensors or ``(inputs, targets, ...)``) of the user's data; int8 is
            calibrated on the first ``calibration_batches`` of them. By default the validation inputs.
        validation_data: ``(inputs, targets)`` batches; records ``val_acc_fp32`` / ``val_acc_int8``
            and is what int8 is checked on.
        variants: names to export (default: all).
        workers: processes to lower variants in (1: this process). More helps only for several
            large variants (``bench/export.py``: 4 ResNet-18 variants, 2 cores: 1.17x); each process
            pays seconds of start-up. Processes are spawned, which re-imports your main script: keep
            its top-level code under ``if __name__ == "__main__":``.
        force: re-export programs that are up to date.
        fp32_tolerance: an fp32 program fails when ``max |program - PyTorch| > fp32_tolerance *
            max(1, max |PyTorch|)`` on any check input.
        int8_max_accuracy_drop: an int8 program fails when its validation accuracy is lower than the
            PyTorch variant's by more than this (without validation data: when its top-1 agrees with
            the PyTorch variant's on fewer than ``1 - drop`` of the calibration inputs).
        check_inputs: random inputs the programs are compared on, besides the first data batches.
        measure: time each exported program on this host (``host`` in the manifest).
        warmup, runs: inferences before and during that timing.

    Returns:
        An :class:`ExportReport`. Programs that failed their check are not written, not listed, and
        warned about; the rest are recorded as each variant finishes.

    Raises:
        PortfolioError: the portfolio is missing or its manifest is invalid (a damaged ``model.pt2``
            fails that variant; a damaged program is exported again).
        ExportError: the disk is full or the portfolio cannot be written.
        ValueError: bad arguments (caught before any work).

    Example::

        >>> import tempfile, torch
        >>> from torch import nn
        >>> from lightning_shifter import Portfolio, add_variant, export_portfolio
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> portfolio = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 4))
        >>> _ = add_variant(portfolio, model, torch.randn(1, 4), name="round-00", round=0)
        >>> report = export_portfolio(portfolio.root, precisions=("fp32", "int8"),
        ...                           calibration_data=[torch.randn(8, 4)], runs=5)
        >>> [(p.name, p.precision, p.status) for p in report.programs]
        [('round-00', 'fp32', 'exported'), ('round-00', 'int8', 'exported')]
        >>> variant = Portfolio.open(portfolio.root)["round-00"]
        >>> sorted(variant.files), sorted(variant.programs["fp32"]), sorted(variant.host["fp32"])
        (['fp32', 'int8', 'pt2'], ['portable_ops', 'source_sha256'], ['load_ms', 'p50_ms', 'p90_ms'])
        >>> [p.status for p in export_portfolio(portfolio.root, precisions=("fp32",)).programs]
        ['skipped']
    """
    start = time.perf_counter()
    precisions = _check_arguments(precisions, calibration_data, validation_data, workers, fp32_tolerance,
                                  int8_max_accuracy_drop, calibration_batches, check_inputs)
    # files are checked one by one below: a damaged one is what an export repairs, not a reason to stop
    portfolio = Portfolio.open(portfolio_dir, verify=False)
    names = list(variants) if variants is not None else portfolio.names
    for name in names:
        portfolio[name]  # unknown names fail here, listing the known ones
    portfolio.remove_stale_temporaries()
    shape, dtype = portfolio.input_shape, portfolio.input_dtype

    validation = [pair for batch in (validation_data or ()) for pair in _split_labelled(batch, shape, dtype)]
    if calibration_data is not None:
        calibration = []
        for batch in calibration_data:
            calibration.extend(_split(batch_inputs(batch), shape, dtype, "calibration_data"))
            if len(calibration) >= calibration_batches:
                break
        calibration = calibration[:calibration_batches]
    else:
        calibration = [x for x, _ in validation[:calibration_batches]]
    if "int8" in precisions and not calibration:
        raise ValueError("the calibration data holds no batch: int8 needs at least one input to calibrate on")
    checks = [example_input(shape, dtype, seed) for seed in range(check_inputs)]
    checks += [x for x, _ in validation[:2]] or calibration[:2]

    reports: list[ProgramReport] = []
    jobs = []
    unlisted: list[tuple[str, str]] = []  # (variant, precision) whose files go once the manifest no longer lists them
    for name in names:
        variant = portfolio[name]
        for orphan in [p for p in PRECISIONS if p not in variant.files]:  # left by a run killed after unlisting it
            portfolio.delete_file(name, orphan)
        if "pt2" not in variant.files:
            reports += [ProgramReport(name, p, "failed", error="the variant has no model.pt2 to export; recreate it "
                                      "with the Compaction callback or lightning_shifter.variants.add_variant")
                        for p in precisions]
            continue
        for stale in [p for p in PRECISIONS if p not in precisions and _stale(variant, p)]:
            _unlist(variant, [stale])
            unlisted.append((name, stale))
            warnings.warn(f"variant {name!r} {stale} program is stale (its model.pt2 changed since it was exported); "
                          f"unlisted it: export precisions=({stale!r},) to make it again", stacklevel=2)
        todo = [p for p in precisions if force or not _up_to_date(portfolio, variant, p)]
        reports += [ProgramReport(name, p, "skipped", bytes=variant.files[p].bytes) for p in precisions if p not in todo]
        if todo:
            jobs.append(_Job(str(portfolio.root), name, todo, calibration, validation, checks, fp32_tolerance,
                             int8_max_accuracy_drop))
    # unlist what is about to be rewritten, so a crash never leaves a listed file with another hash
    for job in jobs:
        _unlist(portfolio[job.name], job.precisions)
    if jobs or unlisted:
        _save(portfolio)
    for name, stale in unlisted:  # only now: a kill before the save above leaves them listed and intact
        portfolio.delete_file(name, stale)

    workers = max(1, min(workers, len(jobs)))
    finished = []
    for outcomes in _run(jobs, workers):
        variant = portfolio[outcomes[0].report.name]
        pt2_sha256 = variant.files["pt2"].sha256
        undelegated: dict[str, list[str]] = {}  # op -> the precisions it stays outside XNNPACK in
        for outcome in outcomes:
            report = outcome.report
            reports.append(report)
            if outcome.entry is None:
                warnings.warn(f"variant {report.name!r} {report.precision} program not exported: {report.error}",
                              stacklevel=2)
                portfolio.delete_file(report.name, report.precision)  # unlisted and saved before the jobs ran
                continue
            variant.files[report.precision] = outcome.entry
            variant.programs[report.precision] = {"source_sha256": pt2_sha256, "portable_ops": report.portable_ops}
            if report.accuracy is not None:
                variant.metrics[PROGRAM_ACCURACIES[report.precision]] = report.accuracy
            for op in report.portable_ops:
                undelegated.setdefault(op, []).append(report.precision)
            finished.append(report)
        if undelegated:  # one line per variant, however many programs and ops
            ops = ", ".join(f"{op} ({'/'.join(precisions)})" for op, precisions in undelegated.items())
            warnings.warn(f"variant {variant.name!r}: {ops} not delegated to XNNPACK, run on ExecuTorch's portable "
                          "CPU kernels (slower; replace them in the model to delegate everything)", stacklevel=2)
        _save(portfolio, variant)

    if measure:  # after all lowering, one program at a time, so timings do not compete with workers
        example = [example_input(shape, dtype)]
        for report in finished:
            timing = measure_program(portfolio.file_path(report.name, report.precision), example, warmup, runs)
            portfolio[report.name].host[report.precision] = timing.to_json()
        if finished:
            _save(portfolio)
    order = {(n, p): i for i, (n, p) in enumerate((n, p) for n in names for p in precisions)}
    reports.sort(key=lambda r: order[(r.name, r.precision)])
    return ExportReport(reports, time.perf_counter() - start, workers)


def _run(jobs: list[_Job], workers: int) -> Iterable[list[_Outcome]]:
    if workers == 1:
        yield from map(_export_variant, jobs)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    for job in jobs:
        job.threads = threads
    context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_export_variant, jobs)


def _up_to_date(portfolio: Portfolio, variant: Any, precision: str) -> bool:
    """Exported from the current model.pt2, and its file intact (a damaged one is exported again)."""
    recorded = variant.programs.get(precision, {})
    if precision not in variant.files or recorded.get("source_sha256") != variant.files["pt2"].sha256:
        return False
    try:
        portfolio.verify_file(variant.name, precision)
    except PortfolioError as err:
        warnings.warn(f"{err}: exporting it again", stacklevel=3)
        return False
    return True


def _stale(variant: Any, precision: str) -> bool:
    source = variant.programs.get(precision, {}).get("source_sha256")
    return precision in variant.files and source is not None and source != variant.files["pt2"].sha256


def _unlist(variant: Any, precisions: Sequence[str]) -> None:
    for precision in precisions:
        variant.files.pop(precision, None)
        variant.programs.pop(precision, None)
        variant.host.pop(precision, None)
        variant.metrics.pop(PROGRAM_ACCURACIES[precision], None)


def _save(portfolio: Portfolio, variant: Any = None) -> None:
    try:
        if variant is None:
            portfolio.save()
        else:
            portfolio.put_variant(variant)
    except OSError as err:
        raise _disk_error(err, portfolio.root, 1 << 16) from None


def _check_arguments(precisions: Sequence[str], calibration_data: Any, validation_data: Any, workers: int,
                     fp32_tolerance: float, int8_max_accuracy_drop: float, calibration_batches: int,
                     check_inputs: int) -> list[str]:
    precisions = [precisions] if isinstance(precisions, str) else list(precisions)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions or len(set(precisions)) != len(precisions):
        raise ValueError(f"precisions must be distinct values from {PRECISIONS}, got {precisions!r}")
    if "int8" in precisions and calibration_data is None and validation_data is None:
        raise ValueError(
            "int8 export needs data to calibrate on: pass calibration_data (e.g. the training DataLoader) or "
            "validation_data, or export precisions=('fp32',) only"
        )
    for data, what in ((calibration_data, "calibration_data"), (validation_data, "validation_data")):
        if data is not None and iter(data) is data:
            raise ValueError(f"{what} is a one-shot iterator: pass a DataLoader or a list of batches")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not fp32_tolerance > 0 or not 0 <= int8_max_accuracy_drop <= 1:
        raise ValueError("fp32_tolerance must be > 0 and int8_max_accuracy_drop in [0, 1]")
    if calibration_batches < 1 or check_inputs < 0:
        raise ValueError("calibration_batches must be >= 1 and check_inputs >= 0")
    return precisions


def _split(x: torch.Tensor, shape: tuple[int, ...], dtype: str, what: str) -> list[torch.Tensor]:
    """Cut a data batch into inputs of the programs' fixed shape (a remainder is left out)."""
    if tuple(x.shape[1:]) != shape[1:] or x.dtype != getattr(torch, dtype):
        raise ValueError(
            f"{what} holds inputs of shape {list(x.shape)} {x.dtype} but the portfolio's programs take "
            f"{list(shape)} {dtype} (batch first): pass data of the portfolio's input"
        )
    step = shape[0]
    return [x[i:i + step].detach().cpu().contiguous() for i in range(0, x.shape[0] - step + 1, step)]


def _split_labelled(batch: Any, shape: tuple[int, ...], dtype: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = default_unpack(batch)
    inputs = _split(x, shape, dtype, "validation_data")
    step = shape[0]
    return [(xi, y[i * step:(i + 1) * step].cpu()) for i, xi in enumerate(inputs)]
