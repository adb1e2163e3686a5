"""Which program runs: selection policies over the options a portfolio offers, given the conditions.

Pure functions of their inputs, no torch, no ExecuTorch: the host :class:`~lightning_shifter.runtime.Switcher`
and the device harness (:func:`lightning_shifter.device.switch_session`) ask the same policy.

* An :class:`Option` is one runnable program: a variant at one precision, with its accuracy, latency and
  memory where known.
* A :class:`Policy` picks one (a :class:`Decision`, with the reason that ends up in the switch log) from
  the options and the *conditions*: a dict of floats such as ``latency_budget_ms``, ``min_accuracy``,
  ``memory_budget_mb``, ``thermal_c`` (the signals of :mod:`lightning_shifter.signals` read them).
* :class:`Constraint` policies (:class:`LatencyBudget`, :class:`MemoryBudget`, :class:`MinAccuracy`) read
  one limit from the conditions; ``&`` combines them in priority order (:class:`AllOf`).

Example::

    >>> from lightning_shifter.policy import LatencyBudget, MinAccuracy, Option
    >>> options = [Option("round-00", "fp32", 0.98, 4.0, 8.0), Option("round-05", "int8", 0.95, 0.6, 0.5)]
    >>> policy = LatencyBudget() & MinAccuracy()
    >>> policy.choose(options, {"latency_budget_ms": 1.0, "min_accuracy": 0.9}).name
    'round-05'
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Option:
    """One runnable program: a variant at one precision, with what is known about its cost.

    ``accuracy`` is None where the portfolio records none, ``latency_ms`` where the program was never
    timed (policies refuse to choose among unmeasured programs: time them first), ``memory_mb`` where
    neither its memory nor its file size is known.

    Example::

        >>> from lightning_shifter.policy import Option
        >>> Option("round-03", "int8", accuracy=0.95, latency_ms=None, memory_mb=0.5).latency_ms is None
        True
    """

    name: str
    precision: str
    accuracy: float | None
    latency_ms: float | None
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


def most_accurate(options: Sequence[Option]) -> Option:
    """The option of highest accuracy (unknown accuracy ranks last); ties go to the faster program.

    Example::

        >>> from lightning_shifter.policy import Option, most_accurate
        >>> most_accurate([Option("a", "fp32", 0.9, 2.0, None), Option("b", "int8", 0.9, 1.0, None)]).name
        'b'
    """
    return max(options, key=lambda o: (-math.inf if o.accuracy is None else o.accuracy,
                                       -math.inf if o.latency_ms is None else -o.latency_ms))


def _fastest(options: Sequence[Option]) -> Option:
    return min(options, key=lambda o: (o.latency_ms, -math.inf if o.accuracy is None else -o.accuracy))


def _smallest(options: Sequence[Option]) -> Option:
    return min(options, key=lambda o: (math.inf if o.memory_mb is None else o.memory_mb, o.latency_ms))


_OBJECTIVES: dict[str, Callable[[Sequence[Option]], Option]] = {
    "accuracy": most_accurate,
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

        >>> from lightning_shifter.policy import LatencyBudget, Option
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

        >>> from lightning_shifter.policy import MemoryBudget, Option
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

        >>> from lightning_shifter.policy import MinAccuracy, Option
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
