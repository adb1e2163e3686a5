"""``lightning-shifter demo`` at a small size: portfolio, programs, native runner, switching, report."""

from __future__ import annotations

import json
import stat

import pytest

from lightning_shifter.cli import main
from lightning_shifter.device import locator
from lightning_shifter.policy import LatencyBudget, Option
from lightning_shifter.portfolio import Portfolio
from lightning_shifter.sessions import load_session

SMALL = ["--rounds", "2", "--width", "4", "--image-size", "8", "--epochs-per-round", "1", "--rewind-step", "5",
         "--session-seconds", "2", "--runner-runs", "5", "--no-progress"]


def _pick(options: list[Option], key) -> tuple[str, str]:
    best = max(options, key=key)
    return best.name, best.precision


@pytest.mark.slow
def test_small_demo_makes_every_artefact(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out

    portfolio = Portfolio.open(out / "portfolio")  # every listed file verified by sha256
    # every round is a variant or a skipped entry; no two variants have the same size (keep="pareto")
    assert sorted([*portfolio.names, *(s.variant.name for s in portfolio.skipped)]) == ["round-00", "round-01", "round-02"]
    assert len({v.params for v in portfolio.variants}) == len(portfolio)
    for v in portfolio.variants:
        assert {"pt2", "fp32", "int8"} <= set(v.files)
        assert (out / "portfolio" / v.name / "model.pte").stat().st_size > 1000
        assert v.metrics["val_acc_compacted"] == v.metrics["val_acc_sparse"]
        assert "val_acc_int8" in v.metrics and v.exactness_error <= 1e-5
        assert v.host["fp32"]["p50_ms"] > 0 and v.host["int8"]["p50_ms"] > 0
        assert v.devices["host-native"]["fp32"]["p50_ms"] > 0  # the native runner, through LocalDevice
        assert v.devices["host-native"]["int8"]["p50_ms"] > 0
    densities = {v.round: round(v.density, 2) for v in [*portfolio.variants, *(s.variant for s in portfolio.skipped)]}
    assert densities == {0: 1.0, 1: 0.14, 2: 0.02}  # --final-density 0.02 in 2 rounds

    # the host session followed the budget: in every phase it ran what the policy picks for that budget,
    # among the Pareto-front programs the demo switches between, from their measured latencies
    host = load_session(out / "sessions" / "host-executorch-switcher.json")
    summary = json.loads((out / "demo_summary.json").read_text())
    # the programs and the latencies the session chose from: timed at the session's pace
    options = [Option(**o) for o in summary["switching"]["host ExecuTorch Switcher"]["options"]]
    assert {o.name for o in options} == {v.name for v in portfolio.pareto_front()}
    expected = {b: LatencyBudget().choose(options, {"latency_budget_ms": b}) for b in {e["budget_ms"] for e in host}}
    for event in host:
        if 0.02 < event["t"] % 0.5 < 0.48:  # clear of the budget's changes
            decision = expected[event["budget_ms"]]
            assert (event["variant"], event["precision"]) == (decision.name, decision.precision)
    budgets = [e["budget_ms"] for e in host]
    assert budgets[0] > min(budgets) and budgets[-1] == budgets[0]  # drops, then rises again
    most_accurate = _pick(options, lambda o: (o.accuracy, -o.latency_ms))
    assert (host[0]["variant"], host[0]["precision"]) == (host[-1]["variant"], host[-1]["precision"]) == most_accurate
    planned = [expected[b] for i, b in enumerate(budgets) if i == 0 or b != budgets[i - 1]]
    changes = sum((a.name, a.precision) != (b.name, b.precision) for a, b in zip(planned, planned[1:]))
    switches = [e for e in host if "switch_us" in e]
    assert len(switches) == changes
    assert all(e["switch_us"] < 1000 and e["reason"] for e in switches)
    native = load_session(out / "sessions" / "native-runner-host-native.json")
    assert native[0]["variant"] and native[-1]["t"] >= 2.0

    # how often the chosen programs met their budget is measured and reported (a figure, not a test)
    assert 0.0 <= summary["switching"]["host ExecuTorch Switcher"]["within_budget"] <= 1.0

    assert summary["native_runner"] == "ok"
    headline = summary["headline"]  # the smallest variant within 1 point of the best dense-size model
    assert headline["variant"] in portfolio.names and headline["accuracy"] >= headline["best_accuracy"] - 0.01
    assert headline["size_ratio"] == headline["dense_params"] / portfolio[headline["variant"]].params
    assert headline["original_size_ratio"] >= 1.0 and "original_max_error" in headline
    assert summary["switching"]["host ExecuTorch Switcher"]["inferences"] == len(host)
    page = out / "report" / "index.html"
    html = page.read_text()
    assert html.count("data:image/png;base64") == 5  # trade-off, native runner, per-layer, two sessions
    assert "Headline: " + headline["variant"] in html and "original DNNShifter rule on the same masks" in html
    assert html.index("Headline") < html.index("<figure>")  # the report leads with it
    assert "Portfolio" in printed and "Switching under a latency budget" in printed and "runner fp32 ms" in printed
    assert printed.index("Headline") < printed.index("Portfolio /")  # so does the printed summary
    assert printed.rstrip().endswith(f"report: {page}")


@pytest.fixture
def failing_build(tmp_path, monkeypatch):
    """Runner sources whose build.sh fails as on a machine without CMake, building into a folder of their own."""
    sources = tmp_path / "sources"
    sources.mkdir()
    script = sources / "build.sh"
    script.write_text("#!/bin/sh\necho \"build.sh: CMake >= 3.28 is needed; install it with 'pip install cmake'\" >&2\n"
                      "exit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(locator, "runner_sources", lambda: sources)
    monkeypatch.setenv("SHIFTER_BUILD_DIR", str(tmp_path / "builds"))


def test_demo_without_a_runner_says_why_and_still_finishes(tmp_path, capsys, failing_build):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rounds", "1", "--width", "4", "--image-size", "8",
                 "--epochs-per-round", "1", "--rewind-step", "5", "--precisions", "fp32", "--session-seconds", "0.5",
                 "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "native runner skipped" in printed and "CMake >= 3.28 is needed; install it with 'pip install cmake'" in printed
    log = tmp_path / "builds" / "host" / "build.log"
    assert f"(whole log: {log})" in printed and "CMake >= 3.28" in log.read_text()
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["native_runner"].startswith("the native runner (host) could not be built: build.sh: CMake")
    assert (out / "report" / "index.html").is_file()
    assert all("int8" not in v.files and not v.devices for v in Portfolio.open(out / "portfolio").variants)


def test_demo_that_requires_the_runner_fails_before_training(tmp_path, capsys, failing_build):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--runner", "require", "--no-progress"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: the native runner (host) could not be built") and "pip install cmake" in error
    assert not (out / "portfolio").exists()
