"""Host-side switching between the variants of an exported portfolio.

The :class:`Switcher` opens a portfolio, verifies every file's sha256, trial-loads every program in
a forked child (:mod:`lightning_shifter.trial`: a program that would crash the runtime is an error,
not the end of this process), preloads every variant's ExecuTorch program (memory-mapped) and
keeps its ``forward`` method loaded, so moving to another variant is a pointer swap instead of a
load from storage. Which variant runs is decided by a
:class:`Policy` from measured latencies, recorded accuracies and the current *conditions*: a dict of
floats merged from pluggable signals (CPU load, a latency budget that changes over time, battery and
thermal state).

This is deployment code: it imports ``lightning_shifter.portfolio`` and ``executorch.runtime`` only,
never Lightning, the exporter or training code.

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

import glob
import logging
import math
import os
import statistics
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from executorch.runtime import Method, Runtime

from lightning_shifter.errors import ShifterError
from lightning_shifter.portfolio import Portfolio, PortfolioError
from lightning_shifter.trial import trial_load

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")


# ---------------------------------------------------------------------------------------- choices
@dataclass(frozen=True)
class Option:
    """One runnable program: a variant at one precision, with what is known about its cost."""

    name: str
    precision: str
    accuracy: float | None
    latency_ms: float
    memory_mb: float | None


@dataclass(frozen=True)
class Decision:
    """The program a policy chose, and why (the reason ends up in the switch log)."""

    name: str
    precision: str
    reason: str


@runtime_checkable
class Policy(Protocol):
    def choose(self, options: Sequence[Option], conditions: Mapping[str, float]) -> Decision: ...


def _most_accurate(options: Sequence[Option]) -> Option:
    # unknown accuracy ranks last; ties go to the faster program
    return max(options, key=lambda o: (-math.inf if o.accuracy is None else o.accuracy, -o.latency_ms))


def _fastest(options: Sequence[Option]) -> Option:
    return min(options, key=lambda o: (o.latency_ms, -math.inf if o.accuracy is None else -o.accuracy))


def _smallest(options: Sequence[Option]) -> Option:
    return min(options, key=lambda o: (math.inf if o.memory_mb is None else o.memory_mb, o.latency_ms))


_OBJECTIVES: dict[str, Callable[[Sequence[Option]], Option]] = {
    "accuracy": _most_accurate,
    "latency": _fastest,
    "memory": _smallest,
}


def _describe(option: Option) -> str:
    acc = "unknown" if option.accuracy is None else f"{option.accuracy:.4f}"
    mem = "" if option.memory_mb is None else f", {option.memory_mb:.2f} MB"
    return f"{option.name}/{option.precision} (acc {acc}, {option.latency_ms:.3f} ms{mem})"


class Constraint(ABC):
    """A limit read from the conditions; options over it are not admitted.

    Subclasses set ``key`` (the condition it reads), ``objective`` (what to maximise among admitted
    options when used alone) and ``fallback`` (what to pick when nothing is admitted). A constraint
    whose key is absent from the conditions admits everything. Combine constraints with ``&``
    (:class:`AllOf`).
    """

    key: str
    objective: str
    fallback: str

    @abstractmethod
    def admits(self, option: Option, limit: float) -> bool: ...

    @abstractmethod
    def describe(self, limit: float) -> str: ...

    def limit(self, conditions: Mapping[str, float]) -> float | None:
        value = conditions.get(self.key)
        return None if value is None else float(value)

    def choose(self, options: Sequence[Option], conditions: Mapping[str, float]) -> Decision:
        return AllOf(self).choose(options, conditions)

    def __and__(self, other: Constraint) -> AllOf:
        return AllOf(self, other)


class LatencyBudget(Constraint):
    """Most accurate option with ``latency_ms <= conditions[key]``; none fits -> the fastest.

    Example::

        >>> from lightning_shifter.runtime import LatencyBudget, Option
        >>> options = [Option("round-00", "fp32", 0.98, 4.0, 8.0),  # name, precision, accuracy, ms, MB
        ...            Option("round-03", "fp32", 0.96, 1.5, 2.0),
        ...            Option("round-03", "int8", 0.95, 0.6, 0.5)]
        >>> LatencyBudget().choose(options, {"latency_budget_ms": 2.0})
        Decision(name='round-03', precision='fp32',
                 reason='best accuracy within latency budget 2 ms: round-03/fp32 (acc 0.9600, 1.500 ms, 2.00 MB)')
        >>> LatencyBudget().choose(options, {"latency_budget_ms": 0.1}).reason
        'latency budget 0.1 ms unmet by every option; best latency instead:
         round-03/int8 (acc 0.9500, 0.600 ms, 0.50 MB)'
        >>> LatencyBudget(key="frame_ms").choose(options, {"frame_ms": 5.0}).name  # a condition of your own
        'round-00'
    """

    objective, fallback = "accuracy", "latency"

    def __init__(self, key: str = "latency_budget_ms") -> None:
        self.key = key

    def admits(self, option: Option, limit: float) -> bool:
        return option.latency_ms <= limit

    def describe(self, limit: float) -> str:
        return f"latency budget {limit:g} ms"


class MemoryBudget(Constraint):
    """Most accurate option with ``memory_mb <= conditions[key]``; none fits -> the smallest.

    Example::

        >>> from lightning_shifter.runtime import MemoryBudget, Option
        >>> options = [Option("round-00", "fp32", 0.98, 4.0, 8.0),  # name, precision, accuracy, ms, MB
        ...            Option("round-03", "fp32", 0.96, 1.5, 2.0),
        ...            Option("round-03", "int8", 0.95, 0.6, 0.5)]
        >>> decision = MemoryBudget().choose(options, {"memory_budget_mb": 4.0})
        >>> decision.name, decision.precision
        ('round-03', 'fp32')
        >>> decision = MemoryBudget().choose(options, {"memory_budget_mb": 0.1})  # nothing fits: the smallest
        >>> decision.name, decision.precision
        ('round-03', 'int8')
        >>> MemoryBudget().choose(options, {}).reason  # no limit given: every option is admitted
        'best accuracy, no limit in the conditions (memory_budget_mb absent):
         round-00/fp32 (acc 0.9800, 4.000 ms, 8.00 MB)'
    """

    objective, fallback = "accuracy", "memory"

    def __init__(self, key: str = "memory_budget_mb") -> None:
        self.key = key

    def admits(self, option: Option, limit: float) -> bool:
        return option.memory_mb is not None and option.memory_mb <= limit

    def describe(self, limit: float) -> str:
        return f"memory budget {limit:g} MB"


class MinAccuracy(Constraint):
    """Fastest option with ``accuracy >= conditions[key]``; none reaches it -> the most accurate.

    Example::

        >>> from lightning_shifter.runtime import MinAccuracy, Option
        >>> options = [Option("round-00", "fp32", 0.98, 4.0, 8.0),  # name, precision, accuracy, ms, MB
        ...            Option("round-03", "fp32", 0.96, 1.5, 2.0),
        ...            Option("round-03", "int8", 0.95, 0.6, 0.5)]
        >>> decision = MinAccuracy().choose(options, {"min_accuracy": 0.955})
        >>> decision.name, decision.precision
        ('round-03', 'fp32')
        >>> MinAccuracy().choose(options, {"min_accuracy": 0.99}).name  # unreachable: the most accurate
        'round-00'
        >>> policy = MinAccuracy() & LatencyBudget()  # accuracy first, then the budget if it can be met too
        >>> policy.choose(options, {"min_accuracy": 0.97, "latency_budget_ms": 2.0}).reason
        'best latency within minimum accuracy 0.97: round-00/fp32 (acc 0.9800, 4.000 ms, 8.00 MB);
         latency budget 2 ms unmet by every option that meets the rest'
    """

    objective, fallback = "latency", "accuracy"

    def __init__(self, key: str = "min_accuracy") -> None:
        self.key = key

    def admits(self, option: Option, limit: float) -> bool:
        return option.accuracy is not None and option.accuracy >= limit

    def describe(self, limit: float) -> str:
        return f"minimum accuracy {limit:g}"


class AllOf:
    """Constraints in priority order, all applied at once.

    Picks by ``objective`` ("accuracy", "latency" or "memory"; default: the first constraint's)
    among the options every active constraint admits. When none is admitted by all, the lowest
    priority constraints are dropped one by one until some option fits, and the reason names the
    unmet ones; when not even the first fits, that constraint's fallback decides.

    Example::

        >>> options = [Option("big", "fp32", 0.98, 4.0, 8.0), Option("small", "fp32", 0.95, 1.0, 2.0)]
        >>> policy = LatencyBudget() & MemoryBudget()
        >>> policy.choose(options, {"latency_budget_ms": 5.0, "memory_budget_mb": 4.0}).name
        'small'
    """

    def __init__(self, *constraints: Constraint, objective: str | None = None) -> None:
        if not constraints:
            raise ValueError("AllOf needs at least one constraint, e.g. AllOf(LatencyBudget(), MinAccuracy())")
        objective = objective or constraints[0].objective
        if objective not in _OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; use one of {sorted(_OBJECTIVES)}")
        self.constraints = tuple(constraints)
        self.objective = objective

    def __and__(self, other: Constraint) -> AllOf:
        return AllOf(*self.constraints, other, objective=self.objective)

    def choose(self, options: Sequence[Option], conditions: Mapping[str, float]) -> Decision:
        if not options:
            raise ValueError("no options to choose from: the switcher has no loaded programs")
        unmeasured = sorted(f"{o.name}/{o.precision}" for o in options if o.latency_ms is None)
        if unmeasured:
            raise ValueError(
                f"no measured latency for {', '.join(unmeasured)}: policies choose from measured latencies; "
                "time the programs first (lightning-shifter bench / device bench, or let Switcher measure them)"
            )
        active = [(c, c.limit(conditions)) for c in self.constraints]
        active = [(c, limit) for c, limit in active if limit is not None]
        pick = _OBJECTIVES[self.objective]
        for kept in range(len(active), 0, -1):
            admitted = [o for o in options if all(c.admits(o, limit) for c, limit in active[:kept])]
            if admitted:
                chosen = pick(admitted)
                met = ", ".join(c.describe(limit) for c, limit in active[:kept])
                reason = f"best {self.objective} within {met}: {_describe(chosen)}"
                unmet = [c.describe(limit) for c, limit in active[kept:]]
                if unmet:
                    reason += f"; {', '.join(unmet)} unmet by every option that meets the rest"
                return Decision(chosen.name, chosen.precision, reason)
        if not active:
            chosen = pick(options)
            keys = ", ".join(c.key for c in self.constraints)
            return Decision(chosen.name, chosen.precision,
                            f"best {self.objective}, no limit in the conditions ({keys} absent): {_describe(chosen)}")
        first, limit = active[0]
        chosen = _OBJECTIVES[first.fallback](options)
        return Decision(chosen.name, chosen.precision,
                        f"{first.describe(limit)} unmet by every option; best {first.fallback} instead: {_describe(chosen)}")


# ---------------------------------------------------------------------------------------- signals
class Signal(Protocol):
    def read(self) -> dict[str, float]: ...


class CpuLoadSignal:
    """``cpu_load``: the 1-minute load average per core (1.0 = every core busy); absent where unknown.

    Example::

        >>> from lightning_shifter.runtime import CpuLoadSignal, ScheduleSignal
        >>> reading = CpuLoadSignal().read()
        >>> set(reading) <= {"cpu_load"} and all(load >= 0 for load in reading.values())
        True
        >>> conditions = {}
        >>> for signal in (CpuLoadSignal(), ScheduleSignal("latency_budget_ms", [(0, 5.0)])):
        ...     conditions.update(signal.read())  # what Switcher.conditions() does with its signals
        >>> sorted(conditions)  # where the platform has a load average (Linux, macOS)
        ['cpu_load', 'latency_budget_ms']
    """

    def read(self) -> dict[str, float]:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return {}
        return {"cpu_load": load / (os.cpu_count() or 1)}


class ScheduleSignal:
    """A condition that changes over time: ``points`` are ``(seconds since start, value)``.

    The value is that of the last point at or before the elapsed time (the first point's before it);
    the clock starts at the first :meth:`read` (or at :meth:`start`).

    Example::

        >>> now = [0.0]
        >>> budget = ScheduleSignal("latency_budget_ms", [(0, 5.0), (10, 1.0)], clock=lambda: now[0])
        >>> budget.read(); now[0] = 12.0; budget.read()
        {'latency_budget_ms': 5.0}
        {'latency_budget_ms': 1.0}
    """

    def __init__(self, key: str, points: Sequence[tuple[float, float]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not points:
            raise ValueError("ScheduleSignal needs at least one (seconds, value) point")
        times = [float(t) for t, _ in points]
        if times != sorted(times) or times[0] < 0:
            raise ValueError(f"ScheduleSignal points must be sorted by time, starting at >= 0; got times {times}")
        self.key = key
        self.points = [(float(t), float(v)) for t, v in points]
        self.clock = clock
        self._start: float | None = None

    def start(self) -> None:
        self._start = self.clock()

    def read(self) -> dict[str, float]:
        if self._start is None:
            self.start()
        elapsed = self.clock() - self._start
        value = self.points[0][1]
        for t, v in self.points:
            if t > elapsed:
                break
            value = v
        return {self.key: value}


class PowerThermalSignal:
    """Battery and temperature from Linux / Android sysfs, keys absent where the platform has none.

    ``battery_percent`` (0-100) and ``charging`` (1.0 or 0.0) from the first battery in
    ``<root>/power_supply``; ``thermal_c``: the hottest ``<root>/thermal/thermal_zone*/temp`` in
    degrees Celsius. Unreadable files (permissions, vanished devices) are skipped.

    Example (a sysfs tree of its own, so that the output does not depend on this machine)::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from lightning_shifter.runtime import PowerThermalSignal
        >>> sysfs = Path(tempfile.mkdtemp())
        >>> battery = sysfs / "power_supply" / "BAT0"
        >>> battery.mkdir(parents=True)
        >>> for name, text in {"type": "Battery", "capacity": "42", "status": "Discharging"}.items():
        ...     _ = (battery / name).write_text(text + "\\n")
        >>> (sysfs / "thermal" / "thermal_zone0").mkdir(parents=True)
        >>> _ = (sysfs / "thermal" / "thermal_zone0" / "temp").write_text("51500\\n")  # millidegrees
        >>> PowerThermalSignal(sysfs).read()
        {'battery_percent': 42.0, 'charging': 0.0, 'thermal_c': 51.5}
        >>> set(PowerThermalSignal().read()) <= {"battery_percent", "charging", "thermal_c"}  # this machine
        True
    """

    def __init__(self, root: str | os.PathLike = "/sys/class") -> None:
        self.root = Path(root)

    @staticmethod
    def _read(path: str | Path) -> str | None:
        try:
            return Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for supply in sorted(glob.glob(str(self.root / "power_supply" / "*"))):
            kind = self._read(Path(supply) / "type")
            capacity = self._read(Path(supply) / "capacity")
            if kind not in (None, "Battery") or capacity is None:
                continue
            try:
                values["battery_percent"] = float(capacity)
            except ValueError:
                continue
            status = self._read(Path(supply) / "status")
            if status is not None:
                values["charging"] = 1.0 if status in ("Charging", "Full") else 0.0
            break
        temps = []
        for zone in glob.glob(str(self.root / "thermal" / "thermal_zone*" / "temp")):
            raw = self._read(zone)
            try:
                temps.append(float(raw) / 1000.0)  # millidegrees
            except (TypeError, ValueError):
                continue
        if temps:
            values["thermal_c"] = max(temps)
        return values


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


def example_input(shape: Sequence[int], dtype: str = "float32", seed: int = 0) -> torch.Tensor:
    """A deterministic input of the portfolio's shape, for latency measurement."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(getattr(torch, dtype))


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
        first = _most_accurate([p.option for p in self._programs.values()])
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
        accuracy = variant.metrics.get(f"val_acc_{precision}")
        if accuracy is None and precision == "fp32":
            accuracy = variant.accuracy
        option = Option(name, precision, None if accuracy is None else float(accuracy), latency_ms,
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

    def remeasure(self, warmup: int = 3, runs: int = 20, interval_s: float = 0.0) -> list[Option]:
        """Time every preloaded program again (e.g. after the load on the machine changed, or paced
        at the rate the application will infer at: ``interval_s``, see :func:`latency_percentiles`)."""
        for program in self._programs.values():
            with program.lock:
                latency_ms, _ = latency_percentiles(program.method, [self._example], warmup, runs, interval_s)
            o = program.option
            program.option = Option(o.name, o.precision, o.accuracy, latency_ms, o.memory_mb)
        return self.options()

    def __repr__(self) -> str:
        name, precision = self.active
        return f"Switcher({str(self.portfolio.root)!r}, programs={len(self._programs)}, active={name}/{precision})"
