"""Switching sessions as the demo, `device switch` and the report share them: budget, events, summary."""

from __future__ import annotations

import math

import pytest

from lightning_shifter import sessions
from lightning_shifter.device import DeviceSwitch, SwitchReport
from lightning_shifter.policy import LatencyBudget, Option


def test_budget_schedule_drops_and_rises_and_every_choice_meets_its_budget():
    options = [Option("a", "fp32", 0.99, 4.0, None), Option("b", "fp32", 0.97, 1.5, None),
               Option("c", "int8", 0.90, 0.5, None), Option("d", "int8", None, 2.0, None)]
    points = sessions.budget_schedule(options, duration_s=8.0)
    assert [t for t, _ in points] == [0.0, 2.0, 4.0, 6.0]
    by_name = {o.name: o for o in options}
    chosen = [by_name[LatencyBudget().choose(options, {"latency_budget_ms": budget}).name] for _, budget in points]
    assert [c.name for c in chosen] == ["a", "b", "c", "a"]  # drops to the headline-like b, the fastest c, back
    assert all(c.latency_ms * 1.3 <= budget + 1e-12 for c, (_, budget) in zip(chosen, points))  # room for noise
    only = sessions.budget_schedule(options[:1], duration_s=3.0)
    assert [LatencyBudget().choose(options[:1], {"latency_budget_ms": b}).name for _, b in only] == ["a"] * 3
    with pytest.raises(ValueError, match="export and measure"):
        sessions.budget_schedule([], 1.0)
    with pytest.raises(ValueError, match="no measured latency for d/int8"):
        sessions.budget_schedule([*options[:3], Option("d", "int8", 0.9, None, None)], 1.0)


def test_device_session_events_and_summary():
    report = SwitchReport("phone", duration_s=3.0, inferences=120)
    report.switches = [
        DeviceSwitch(0.0, None, "round-00", "fp32", "initial", 5.0, {"latency_budget_ms": 2.0}),
        DeviceSwitch(1.0, ("round-00", "fp32"), "round-03", "int8", "budget", 0.5, {"latency_budget_ms": 0.1}),
    ]
    events = sessions.device_session_events(report)
    assert events == [
        {"t": 0.0, "variant": "round-00", "precision": "fp32", "reason": "initial", "budget_ms": 2.0},
        {"t": 1.0, "variant": "round-03", "precision": "int8", "reason": "budget", "budget_ms": 0.1, "switch_us": 0.5},
        {"t": 3.0, "variant": "round-03", "precision": "int8", "budget_ms": 0.1},
    ]
    summary = sessions.switching_summary(events, load_ms=[2.0, 4.0], inferences=report.inferences)
    assert summary["switches"] == 1 and summary["switch_us_median"] == 0.5 and summary["inferences"] == 120
    assert math.isclose(summary["speedup_vs_load"], 3.0 * 1e3 / 0.5)
    assert sessions.switching_summary([], [], 0) == {"inferences": 0, "switches": 0, "programs": []}
