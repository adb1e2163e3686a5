"""Switching sessions: a latency budget to run them under, running them, and their log.

A session log is a list of events in time order, the format ``lightning-shifter report --session`` plots:
each has ``t`` (seconds since the start) and ``variant``, and where known ``precision``, ``latency_ms``
(of that inference), ``budget_ms`` (the budget of that moment), ``reason`` (why the policy switched)
and ``switch_us`` (what the switch cost). A file holds the list, or ``{"events": [...]}`` with other
keys beside it (a title, a summary).

* :func:`budget_schedule` scales a budget that drops and rises to the programs' measured latencies;
* :func:`host_switch_session` runs a host :class:`~lightning_shifter.runtime.Switcher` under it;
* :func:`device_session_events` turns a device's :class:`~lightning_shifter.device.SwitchReport` into
  the same events; :func:`switching_summary` sums a session up; :func:`load_session` reads a log.

Deployment code: nothing here imports Lightning or training code (``lightning-shifter device switch``
and ``bench`` use it as much as the demo does).

Example::

    >>> from lightning_shifter.sessions import switching_summary
    >>> events = [{"t": 0.0, "variant": "round-00", "latency_ms": 3.0, "budget_ms": 5.0},
    ...           {"t": 1.0, "variant": "round-04", "latency_ms": 0.4, "budget_ms": 0.5, "switch_us": 1.5}]
    >>> summary = switching_summary(events, load_ms=[12.0], inferences=2)
    >>> summary["switches"], summary["within_budget"], summary["speedup_vs_load"]
    (1, 1.0, 8000.0)
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_shifter.policy import Option

if TYPE_CHECKING:  # torch and executorch are imported only where a session runs
    from lightning_shifter.device import SwitchReport
    from lightning_shifter.runtime import Switcher


def load_session(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a switching-session log written as JSON (a list of events, or ``{"events": [...]}``).

    Example::

        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from lightning_shifter.sessions import load_session
        >>> path = Path(tempfile.mkdtemp()) / "session.json"
        >>> _ = path.write_text(json.dumps({"title": "phone", "events": [{"t": 0, "variant": "round-00"}]}))
        >>> load_session(path)
        [{'t': 0, 'variant': 'round-00'}]
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    events = data.get("events") if isinstance(data, dict) else data
    if not isinstance(events, list) or not all(isinstance(e, dict) and "t" in e and "variant" in e for e in events):
        raise ValueError(f"{path}: expected a list of events with at least 't' and 'variant'")
    return events


def budget_schedule(options: Sequence[Option], duration_s: float, margin: float = 1.3) -> list[tuple[float, float]]:
    """A latency budget that drops and rises again, which the program the policy picks always meets.

    Equal phases: generous (every program fits: the most accurate runs), then ``margin`` times the
    latency of the most accurate program at least twice as fast as that one (when there is such a
    program, other than the fastest), then ``margin`` times the fastest program's latency, then
    generous again. A budget policy picks, in each phase, a program whose measured latency is within
    the budget (the targeted one, or a faster one that is more accurate), with ``margin`` to spare
    for noise.

    Example::

        >>> from lightning_shifter.policy import Option
        >>> from lightning_shifter.sessions import budget_schedule
        >>> options = [Option("dense", "fp32", 0.99, 4.0, None), Option("small", "fp32", 0.98, 1.5, None),
        ...            Option("tiny", "int8", 0.95, 0.5, None)]
        >>> [(t, round(b, 2)) for t, b in budget_schedule(options, duration_s=8.0)]
        [(0.0, 6.0), (2.0, 1.95), (4.0, 0.65), (6.0, 6.0)]
    """
    if not options:
        raise ValueError("no programs to scale the budget to: export and measure the portfolio first")
    unmeasured = [f"{o.name}/{o.precision}" for o in options if o.latency_ms is None]
    if unmeasured:
        raise ValueError(f"no measured latency for {', '.join(unmeasured)}: time the programs first")
    if margin < 1.0:
        raise ValueError(f"margin must be >= 1 (a budget below the target's own latency), got {margin!r}")

    def accuracy(option: Option) -> float:
        return -math.inf if option.accuracy is None else option.accuracy

    best = max(options, key=lambda o: (accuracy(o), -o.latency_ms))
    fastest = min(options, key=lambda o: (o.latency_ms, -accuracy(o)))
    faster = [o for o in options if o.latency_ms <= best.latency_ms / 2 and o is not fastest]
    budgets = [1.5 * max(o.latency_ms for o in options)]
    if faster:
        budgets.append(margin * max(faster, key=lambda o: (accuracy(o), -o.latency_ms)).latency_ms)
    budgets += [margin * fastest.latency_ms, budgets[0]]
    phase = duration_s / len(budgets)
    return [(i * phase, budget) for i, budget in enumerate(budgets)]


#: Seconds between two inferences of a host switching session (:func:`host_switch_session`).
SESSION_INTERVAL_S = 0.01


def host_switch_session(switcher: Switcher, duration_s: float, interval_s: float = SESSION_INTERVAL_S,
                        on_step: Callable[[float], None] | None = None) -> list[dict[str, Any]]:
    """Run one inference every ``interval_s`` for ``duration_s``, letting ``switcher``'s policy pick
    the program from its signals before each; return the events in the report's session format.

    Each event: ``t`` (s since the start), ``variant``, ``precision``, ``latency_ms`` and
    ``budget_ms`` (``conditions["latency_budget_ms"]``); events where the switcher switched also
    carry the policy's ``reason`` and the measured ``switch_us``.
    """
    from lightning_shifter.batches import example_input

    for signal in switcher.signals:
        if hasattr(signal, "start"):
            signal.start()  # schedules count from the start of the session
    switcher.select(**switcher.conditions())  # the initial choice, before the first timed inference
    example = example_input(switcher.portfolio.input_shape, switcher.portfolio.input_dtype)
    events: list[dict[str, Any]] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration_s:
        conditions = switcher.conditions()
        before = switcher.active
        switcher.select(**conditions)
        result = switcher.run(example)
        event: dict[str, Any] = {"t": elapsed, "variant": result.name, "precision": result.precision,
                                 "latency_ms": result.latency_ms, "budget_ms": conditions.get("latency_budget_ms")}
        if switcher.active != before:
            switch = switcher.history[-1]
            event.update(reason=switch.reason, switch_us=switch.overhead_ms * 1e3)
        events.append(event)
        if on_step is not None:
            on_step(elapsed)
        if interval_s > 0:  # sleep(0) would still yield the processor, and the next inference runs colder
            time.sleep(max(0.0, start + len(events) * interval_s - time.monotonic()))
    return events


def device_session_events(report: SwitchReport) -> list[dict[str, Any]]:
    """A device :class:`~lightning_shifter.device.SwitchReport` in the report's session format: the
    initial choice, one event per switch (with ``switch_us``), and one marking the end of the session."""
    events = [{"t": s.time_s, "variant": s.name, "precision": s.precision, "reason": s.reason,
               "budget_ms": s.conditions.get("latency_budget_ms")} for s in report.switches]
    for event, switch in zip(events, report.switches):
        if switch.previous is not None:  # the first is the initial choice, not a switch
            event["switch_us"] = switch.switch_us
    if events:
        last = events[-1]
        events.append({"t": report.duration_s, "variant": last["variant"], "precision": last["precision"],
                       "budget_ms": last["budget_ms"]})
    return events


def switching_summary(events: Sequence[dict[str, Any]], load_ms: Sequence[float], inferences: int) -> dict[str, Any]:
    """Switch count and overheads of a session, against loading a program from storage (``load_ms``),
    and the share of timed inferences that met the budget of their moment (``within_budget``)."""
    overheads = sorted(float(e["switch_us"]) for e in events if e.get("switch_us") is not None)
    summary: dict[str, Any] = {"inferences": inferences, "switches": len(overheads),
                               "programs": sorted({f"{e['variant']}/{e.get('precision', 'fp32')}" for e in events})}
    timed = [e for e in events if e.get("latency_ms") is not None and e.get("budget_ms") is not None]
    if timed:
        summary["within_budget"] = sum(e["latency_ms"] <= e["budget_ms"] for e in timed) / len(timed)
    if overheads:
        summary.update(switch_us_median=statistics.median(overheads), switch_us_max=overheads[-1])
    if load_ms:
        summary["load_ms_median"] = statistics.median(load_ms)
        if overheads:
            summary["speedup_vs_load"] = summary["load_ms_median"] * 1e3 / max(summary["switch_us_median"], 1e-3)
    return summary
