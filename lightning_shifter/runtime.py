"""Host-side switching between the variants of an exported portfolio, on the ExecuTorch runtime.

The :class:`Switcher` opens a portfolio, verifies every file's sha256, trial-loads every program in
a forked child (:mod:`lightning_shifter.trial`: a program that would crash the runtime is an error,
not the end of this process), preloads every variant's ExecuTorch program (memory-mapped) and
keeps its ``forward`` method loaded, so moving to another variant is a pointer swap instead of a
load from storage. Which variant runs is decided by a policy (:mod:`lightning_shifter.policy`) from
measured latencies, recorded accuracies and the current *conditions*: a dict of floats merged from
pluggable signals (:mod:`lightning_shifter.signals`: CPU load, a latency budget that changes over
time, battery and thermal state). :func:`load_method` and :func:`measure_program` load and time one
program (the exporter and ``lightning-shifter bench`` use them too).

This is deployment code: it imports ``lightning_shifter.portfolio`` and ``executorch.runtime`` only,
never Lightning, the exporter or training code. The policy and signal names are importable from here
as well (``from lightning_shifter.runtime import LatencyBudget``), as they were before they got
modules of their own.

Example (a portfolio exported by ``export_portfolio``)::

    switcher = Switcher("portfolio/", policy=LatencyBudget() & MinAccuracy(), signals=[
        ScheduleSignal("latency_budget_ms", [(0, 5.0), (60, 0.5)]),  # the budget tightens after a minute
        PowerThermalSignal(), CpuLoadSignal(),
    ])
    switcher.select(min_accuracy=0.9)   # most accurate program within the budget, switched to if needed
    logits = switcher(torch.randn(*switcher.portfolio.input_shape))
    print(switcher.history[-1].reason, switcher.history[-1].overhead_ms)
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from executorch.runtime import Method, Runtime

from lightning_shifter.batches import example_input
from lightning_shifter.errors import ShifterError
from lightning_shifter.policy import (  # noqa: F401  (re-exported: their names' home before the split)
    AllOf,
    Constraint,
    Decision,
    LatencyBudget,
    MemoryBudget,
    MinAccuracy,
    Option,
    Policy,
    most_accurate,
)
from lightning_shifter.portfolio import PRECISIONS, Portfolio, PortfolioError
from lightning_shifter.signals import CpuLoadSignal, PowerThermalSignal, ScheduleSignal, Signal  # noqa: F401
from lightning_shifter.trial import trial_load

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class ProgramTiming:
    """Host measurements of one program: load (mmap + method init) and inference percentiles."""

    load_ms: float
    p50_ms: float
    p90_ms: float

    def to_json(self) -> dict[str, float]:
        return {"load_ms": self.load_ms, "p50_ms": self.p50_ms, "p90_ms": self.p90_ms}


def load_method(path: str | os.PathLike) -> tuple[Method, float]:
    """Load a ``.pte`` file (memory-mapped by the runtime) and its ``forward``; returns (method, ms).

    The program is first loaded and run once in a child process (:func:`lightning_shifter.trial.trial_load`,
    once per file and process), so that a program that would crash the runtime raises
    :class:`~lightning_shifter.portfolio.PortfolioError` instead; the milliseconds returned are the
    load in this process alone.
    """
    problem = trial_load([path])[Path(path)]
    if problem is not None:
        raise PortfolioError(f"the ExecuTorch program {path} cannot be used: {problem}; re-export it "
                             "(lightning-shifter export --force)")
    start = time.perf_counter()
    try:
        method = Runtime.get().load_program(str(path)).load_method("forward")
    except RuntimeError as err:
        raise PortfolioError(
            f"the ExecuTorch runtime cannot load {path} ({err}); the program is corrupt or needs an "
            "operator this runtime lacks: re-export it with this executorch version"
        ) from None
    return method, (time.perf_counter() - start) * 1e3


def latency_percentiles(method: Method, inputs: Sequence[torch.Tensor], warmup: int = 3,
                        runs: int = 20, interval_s: float = 0.0) -> tuple[float, float]:
    """p50 and p90 (ms) of ``method.execute(inputs)`` over ``runs`` timed runs after ``warmup``.

    With ``interval_s`` > 0 the runs are paced, one every ``interval_s`` seconds, as an application
    that infers at a fixed rate runs them: caches go cold in between, and small programs take much
    longer than back to back.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        method.execute(inputs)
    samples = []
    for _ in range(runs):
        if interval_s > 0:
            time.sleep(interval_s)
        start = time.perf_counter()
        method.execute(inputs)
        samples.append((time.perf_counter() - start) * 1e3)
    if len(samples) == 1:
        return samples[0], samples[0]
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return statistics.median(samples), deciles[8]


def measure_program(path: str | os.PathLike, inputs: Sequence[torch.Tensor], warmup: int = 3,
                    runs: int = 20) -> ProgramTiming:
    """Load a ``.pte`` afresh and time it (what ``host`` in the manifest records)."""
    method, load_ms = load_method(path)
    p50, p90 = latency_percentiles(method, inputs, warmup, runs)
    return ProgramTiming(load_ms, p50, p90)


# ---------------------------------------------------------------------------------------- switcher
@dataclass(frozen=True)
class SwitchEvent:
    """One switch: when (unix time), from and to which program, why, and how long the swap took."""

    time: float
    previous: tuple[str, str] | None
    name: str
    precision: str
    reason: str
    overhead_ms: float
    conditions: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Inference:
    """Outputs of one inference and the program that produced all of them."""

    name: str
    precision: str
    outputs: list[torch.Tensor]
    latency_ms: float


@dataclass
class _Loaded:
    name: str
    precision: str
    method: Method
    path: Path
    load_ms: float
    option: Option
    lock: threading.Lock = field(default_factory=threading.Lock)  # one execute per method at a time


class SwitchError(ShifterError, ValueError):
    """An unknown variant or precision, or a switcher with nothing to run."""


class Switcher:
    """Preloads every program of a portfolio and runs inference on the active one.

    Args:
        portfolio_dir: an exported portfolio (see :func:`lightning_shifter.export_portfolio`).
        precisions: which programs to preload, ``"fp32"`` and/or ``"int8"``.
        variants: names to preload (default: every variant that has a program of a wanted precision).
        policy: decides in :meth:`select`; default :class:`LatencyBudget`.
        signals: objects with ``read() -> dict[str, float]``, merged (in order) into the conditions.
        measure: ``True`` times every program here, ``False`` uses the manifest's ``host`` figures
            (error if absent), ``None`` uses them where present and measures the rest.
        warmup, runs: inferences before and during latency measurement.
        verify: check every listed file's sha256 before loading anything.
        history: how many switch events to keep.

    Thread-safe: :meth:`run` takes the active program once, so an inference is computed by one
    program from start to end even when another thread switches meanwhile; a program's method never
    runs on two threads at once.

    Example::

        >>> import tempfile, torch
        >>> from torch import nn
        >>> from lightning_shifter import Portfolio, Switcher, add_variant, export_portfolio
        >>> _ = torch.manual_seed(0)
        >>> portfolio = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 8))
        >>> for r, hidden in enumerate((64, 8)):  # a large and a small variant
        ...     model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        ...     _ = add_variant(portfolio, model, torch.randn(1, 8), name=f"round-{r:02d}", round=r,
        ...                     metrics={"val_acc_compacted": 0.95 - 0.05 * r})
        >>> _ = export_portfolio(portfolio.root, precisions=("fp32",), runs=5)
        >>> switcher = Switcher(portfolio.root)  # loads every program, verified by sha256
        >>> switcher.active  # the most accurate program first
        ('round-00', 'fp32')
        >>> event = switcher.switch("round-01", reason="user asked")
        >>> event.previous, event.name, event.reason
        (('round-00', 'fp32'), 'round-01', 'user asked')
        >>> result = switcher.run(torch.randn(1, 8))
        >>> result.name, result.precision, tuple(result.outputs[0].shape)
        ('round-01', 'fp32', (1, 3))
        >>> switcher.select(latency_budget_ms=1000.0).name  # everything fits: the most accurate
        'round-00'
        >>> switcher(torch.randn(1, 8)).shape  # the first output of the active program
        torch.Size([1, 3])
    """

    def __init__(self, portfolio_dir: str | os.PathLike, precisions: str | Sequence[str] = ("fp32",), *,
                 variants: Sequence[str] | None = None, policy: Policy | None = None,
                 signals: Sequence[Signal] = (), measure: bool | None = None, warmup: int = 3,
                 runs: int = 20, verify: bool = True, history: int = 1000) -> None:
        precisions = (precisions,) if isinstance(precisions, str) else tuple(precisions)
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown or not precisions:
            raise SwitchError(f"unknown precision(s) {unknown or precisions!r}; use some of {PRECISIONS}")
        self.portfolio = Portfolio.open(portfolio_dir, verify="sha256" if verify else "size")
        self.policy: Policy = policy if policy is not None else LatencyBudget()
        self.signals = list(signals)
        self.history: deque[SwitchEvent] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._example = example_input(self.portfolio.input_shape, self.portfolio.input_dtype)

        names = list(variants) if variants is not None else self.portfolio.names
        for name in names:
            self.portfolio[name]  # raises with the list of known names
        # every program's trial load in one child process (load_method then finds them tried)
        trial_load([self.portfolio.file_path(n, p) for n in names for p in precisions if p in self.portfolio[n].files])
        self._programs: dict[tuple[str, str], _Loaded] = {}
        for name in names:
            variant = self.portfolio[name]
            for precision in precisions:
                if precision not in variant.files:
                    if variants is not None:
                        raise SwitchError(
                            f"variant {name!r} has no {precision} program; export it with "
                            f"export_portfolio(..., precisions=({precision!r},)) or leave it out"
                        )
                    continue
                self._programs[(name, precision)] = self._load(name, precision, measure, warmup, runs)
        if not self._programs:
            raise SwitchError(
                f"{self.portfolio.root} has no {'/'.join(precisions)} programs to load: export the "
                "portfolio first (lightning_shifter.export_portfolio or the ExecuTorchExport callback)"
            )
        first = most_accurate([p.option for p in self._programs.values()])
        self._active = self._programs[(first.name, first.precision)]
        self._record(None, self._active, "initial: most accurate program", 0.0, {})

    def _load(self, name: str, precision: str, measure: bool | None, warmup: int, runs: int) -> _Loaded:
        variant = self.portfolio[name]
        path = self.portfolio.file_path(name, precision)
        method, load_ms = load_method(path)
        recorded = variant.host.get(precision, {})
        if measure is False and "p50_ms" not in recorded:
            raise SwitchError(
                f"variant {name!r} has no host latency for {precision} in the manifest; pass measure=None "
                "to measure it here"
            )
        if measure or "p50_ms" not in recorded:
            latency_ms, _ = latency_percentiles(method, [self._example], warmup, runs)
        else:
            latency_ms = float(recorded["p50_ms"])
        option = Option(name, precision, variant.program_accuracy(precision), latency_ms,
                        variant.files[precision].bytes / 2**20)
        return _Loaded(name, precision, method, path, load_ms, option)

    # -------------------------------------------------------------------- state
    @property
    def names(self) -> list[str]:
        return sorted({name for name, _ in self._programs}, key=self.portfolio.names.index)

    @property
    def active(self) -> tuple[str, str]:
        """``(name, precision)`` of the program that :meth:`run` uses now."""
        current = self._active
        return current.name, current.precision

    def options(self) -> list[Option]:
        """What policies choose from: one option per preloaded program."""
        return [p.option for p in self._programs.values()]

    def conditions(self, **overrides: float) -> dict[str, float]:
        """Readings of every signal merged in order, then ``overrides``."""
        merged: dict[str, float] = {}
        for signal in self.signals:
            merged.update(signal.read())
        merged.update(overrides)
        return merged

    # -------------------------------------------------------------------- switching
    def switch(self, name: str, precision: str | None = None, *, reason: str = "manual",
               conditions: Mapping[str, float] | None = None) -> SwitchEvent:
        """Make ``name`` (at ``precision``, default: the current one if loaded) the active program."""
        if precision is None:
            loaded_precisions = [p for n, p in self._programs if n == name]
            keep = self._active.precision
            precision = keep if keep in loaded_precisions or not loaded_precisions else loaded_precisions[0]
        target = self._programs.get((name, precision))
        if target is None:
            loaded = ", ".join(f"{n}/{p}" for n, p in self._programs)
            raise SwitchError(f"no preloaded program {name!r} at {precision}; loaded programs: {loaded}")
        start = time.perf_counter()
        with self._lock:
            previous = self._active
            self._active = target
        overhead_ms = (time.perf_counter() - start) * 1e3
        return self._record(previous, target, reason, overhead_ms, dict(conditions or {}))

    def select(self, **overrides: float) -> Decision:
        """Read the signals, ask the policy, and switch if it chose another program."""
        conditions = self.conditions(**overrides)
        decision = self.policy.choose(self.options(), conditions)
        if (decision.name, decision.precision) != self.active:
            self.switch(decision.name, decision.precision, reason=decision.reason, conditions=conditions)
        return decision

    def _record(self, previous: _Loaded | None, target: _Loaded, reason: str, overhead_ms: float,
                conditions: dict[str, float]) -> SwitchEvent:
        event = SwitchEvent(time.time(), None if previous is None else (previous.name, previous.precision),
                            target.name, target.precision, reason, overhead_ms, conditions)
        self.history.append(event)
        log.info("switched to %s/%s in %.4f ms: %s", target.name, target.precision, overhead_ms, reason)
        return event

    # -------------------------------------------------------------------- inference
    def run(self, *inputs: torch.Tensor) -> Inference:
        """Run the active program on ``inputs``; the result says which program computed it."""
        expected = tuple(self.portfolio.input_shape)
        for x in inputs:
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != expected:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise SwitchError(f"input of shape {got} given; the portfolio's programs take {expected}")
        with self._lock:
            program = self._active
        with program.lock:
            start = time.perf_counter()
            outputs = list(program.method.execute(list(inputs)))
            latency_ms = (time.perf_counter() - start) * 1e3
        return Inference(program.name, program.precision, outputs, latency_ms)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The first output of :meth:`run`."""
        return self.run(*inputs).outputs[0]

    def remeasure(self, warmup: int = 3, runs: int = 20, interval_s: float = 0.0,
                  percentile: int = 50) -> list[Option]:
        """Time every preloaded program again (e.g. after the load on the machine changed, or paced
        at the rate the application will infer at: ``interval_s``, see :func:`latency_percentiles`).

        ``percentile`` 50 records the median as each option's latency, 90 the 90th percentile: the
        latency that a budget policy then compares with a budget is met by nine runs in ten.
        """
        if percentile not in (50, 90):
            raise ValueError(f"percentile must be 50 or 90, got {percentile!r}")
        for program in self._programs.values():
            with program.lock:
                p50, p90 = latency_percentiles(program.method, [self._example], warmup, runs, interval_s)
            program.option = replace(program.option, latency_ms=p50 if percentile == 50 else p90)
        return self.options()

    def __repr__(self) -> str:
        name, precision = self.active
        return f"Switcher({str(self.portfolio.root)!r}, programs={len(self._programs)}, active={name}/{precision})"
