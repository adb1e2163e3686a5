"""Host switching: policies, signals, the preloaded Switcher, thread safety, rejected input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lightning_shifter.portfolio import Portfolio, PortfolioError
from lightning_shifter.policy import AllOf, Decision, LatencyBudget, MemoryBudget, MinAccuracy, Option, Policy
from lightning_shifter.runtime import Switcher, SwitchError
from lightning_shifter.signals import CpuLoadSignal, PowerThermalSignal, ScheduleSignal
from test_export import SHAPE, build_portfolio, exported, tiny_net

OPTIONS = [
    Option("dense", "fp32", 0.98, 4.0, 8.0),
    Option("mid", "fp32", 0.96, 2.0, 4.0),
    Option("mid", "int8", 0.95, 1.0, 1.0),
    Option("tiny", "fp32", 0.90, 0.5, 0.5),
    Option("unknown", "fp32", None, 0.4, None),
]


@pytest.fixture
def exported_portfolio(tmp_path_factory, digits):
    return exported(tmp_path_factory, digits)


# ---------------------------------------------------------------- policies
def test_latency_budget():
    policy = LatencyBudget()
    assert isinstance(policy, Policy)
    assert policy.choose(OPTIONS, {"latency_budget_ms": 10}) == Decision(
        "dense", "fp32", "best accuracy within latency budget 10 ms: dense/fp32 (acc 0.9800, 4.000 ms, 8.00 MB)")
    assert policy.choose(OPTIONS, {"latency_budget_ms": 2.0}).name == "mid"  # the budget is inclusive
    assert (lambda d: (d.name, d.precision))(policy.choose(OPTIONS, {"latency_budget_ms": 1.5})) == ("mid", "int8")
    unmet = policy.choose(OPTIONS, {"latency_budget_ms": 0.1})
    assert unmet.name == "unknown" and "latency budget 0.1 ms unmet by every option; best latency" in unmet.reason
    absent = policy.choose(OPTIONS, {"cpu_load": 0.5})
    assert absent.name == "dense" and "latency_budget_ms absent" in absent.reason


def test_memory_budget_and_min_accuracy():
    assert MemoryBudget().choose(OPTIONS, {"memory_budget_mb": 4.0}).name == "mid"
    smallest = MemoryBudget().choose(OPTIONS, {"memory_budget_mb": 0.1})  # unknown memory never fits
    assert smallest.name == "tiny" and "unmet" in smallest.reason
    assert MinAccuracy().choose(OPTIONS, {"min_accuracy": 0.95}) == Decision(
        "mid", "int8", "best latency within minimum accuracy 0.95: mid/int8 (acc 0.9500, 1.000 ms, 1.00 MB)")
    best = MinAccuracy().choose(OPTIONS, {"min_accuracy": 0.99})
    assert best.name == "dense" and "minimum accuracy 0.99 unmet" in best.reason


def test_options_without_a_measured_latency_are_refused_clearly():
    unmeasured = [*OPTIONS, Option("fresh", "fp32", 0.99, None, 1.0)]  # e.g. device_options before any bench
    for policy in (LatencyBudget(), MemoryBudget(), MinAccuracy()):
        with pytest.raises(ValueError, match="no measured latency for fresh/fp32: .* time the programs first"):
            policy.choose(unmeasured, {})


def test_combined_constraints_relax_lowest_priority_first():
    policy = LatencyBudget() & MinAccuracy() & MemoryBudget()
    assert isinstance(policy, AllOf) and policy.objective == "accuracy"
    assert policy.choose(OPTIONS, {"latency_budget_ms": 3, "min_accuracy": 0.9, "memory_budget_mb": 2}).name == "mid"
    # no option is fast enough, accurate enough and small enough: memory (last) is dropped first
    relaxed = policy.choose(OPTIONS, {"latency_budget_ms": 2.5, "min_accuracy": 0.96, "memory_budget_mb": 0.5})
    assert (relaxed.name, relaxed.precision) == ("mid", "fp32")
    assert "memory budget 0.5 MB unmet by every option that meets the rest" in relaxed.reason
    fastest = AllOf(MinAccuracy(), LatencyBudget(), objective="latency")
    assert fastest.choose(OPTIONS, {"min_accuracy": 0.9, "latency_budget_ms": 3}).name == "tiny"
    with pytest.raises(ValueError, match="unknown objective"):
        AllOf(LatencyBudget(), objective="beauty")
    with pytest.raises(ValueError, match="no options"):
        LatencyBudget().choose([], {})


# ---------------------------------------------------------------- signals
def test_schedule_signal_follows_the_clock():
    now = [100.0]
    signal = ScheduleSignal("latency_budget_ms", [(0, 5.0), (10, 1.0), (20, 3.0)], clock=lambda: now[0])
    readings = []
    for t in (100.0, 109.9, 110.0, 125.0):
        now[0] = t
        readings.append(signal.read()["latency_budget_ms"])
    assert readings == [5.0, 5.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="sorted by time"):
        ScheduleSignal("x", [(5, 1.0), (1, 2.0)])
    with pytest.raises(ValueError, match="at least one"):
        ScheduleSignal("x", [])


def test_power_thermal_signal_reads_sysfs(tmp_path):
    assert PowerThermalSignal(tmp_path).read() == {}  # a platform without either: keys absent
    battery = tmp_path / "power_supply" / "battery"
    battery.mkdir(parents=True)
    (battery / "type").write_text("Battery\n")
    (battery / "capacity").write_text("42\n")
    (battery / "status").write_text("Discharging\n")
    charger = tmp_path / "power_supply" / "ac"
    charger.mkdir()
    (charger / "type").write_text("Mains\n")
    for zone, milli in (("thermal_zone0", "45000"), ("thermal_zone1", "61500"), ("thermal_zone2", "garbage")):
        (tmp_path / "thermal" / zone).mkdir(parents=True)
        (tmp_path / "thermal" / zone / "temp").write_text(milli)
    assert PowerThermalSignal(tmp_path).read() == {"battery_percent": 42.0, "charging": 0.0, "thermal_c": 61.5}


def test_cpu_load_signal():
    (load,) = CpuLoadSignal().read().values()
    assert 0.0 <= load < 1000 and math.isfinite(load)


# ---------------------------------------------------------------- switcher
def test_switcher_runs_every_preloaded_program(exported_portfolio, digits):
    root, models, _ = exported_portfolio
    switcher = Switcher(root, ("fp32", "int8"), runs=5)
    assert switcher.names == list(models) and len(switcher.options()) == 4
    assert switcher.active == ("round-00", "fp32")  # the most accurate first
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    for name, model in models.items():
        event = switcher.switch(name, "fp32", reason="test")
        assert event.name == name and event.reason == "test" and 0 <= event.overhead_ms < math.inf
        result = switcher.run(x)
        want = model(x).detach()
        assert result.name == name and result.precision == "fp32"
        assert torch.allclose(result.outputs[0], want, atol=1e-4 * max(1.0, float(want.abs().max())), rtol=0)
        switcher.switch(name, "int8")  # int8 agrees with the PyTorch variant on real digits
        agree = sum(int(switcher(d[None]).argmax(1) == model(d[None]).argmax(1)) for d in digits.val_set.tensors[0][:20])
        assert agree >= 18
    manifest = Portfolio.open(root)
    for option in switcher.options():
        assert option.accuracy == manifest[option.name].metrics[f"val_acc_{option.precision}"]
        assert option.memory_mb == manifest[option.name].files[option.precision].bytes / 2**20
    recorded = Switcher(root, "fp32", measure=False)
    assert [o.latency_ms for o in recorded.options()] == [manifest[n].host["fp32"]["p50_ms"] for n in models]


def test_switching_under_a_changing_latency_budget(exported_portfolio):
    root, models, _ = exported_portfolio
    now = [0.0]
    between = 10.0  # replaced below by a budget between the two measured latencies
    schedule = [(0, 1e9), (10, between), (20, 1e-9), (30, 1e9)]
    switcher = Switcher(root, "fp32", policy=LatencyBudget(), runs=10)
    fast, slow = sorted(switcher.options(), key=lambda o: o.latency_ms)
    schedule[1] = (10, (fast.latency_ms + slow.latency_ms) / 2)
    switcher.signals = [ScheduleSignal("latency_budget_ms", schedule, clock=lambda: now[0]), CpuLoadSignal()]
    most_accurate = max(switcher.options(), key=lambda o: o.accuracy)
    expected = {0.0: most_accurate.name, 10.0: fast.name if fast.latency_ms != slow.latency_ms else most_accurate.name,
                20.0: fast.name, 30.0: most_accurate.name}
    decisions = {}
    for t, name in expected.items():
        now[0] = t
        decisions[t] = switcher.select()
        assert decisions[t].name == name and switcher.active == (name, "fp32")
    assert "latency budget 1e-09 ms unmet by every option" in decisions[20.0].reason
    assert "best accuracy within latency budget 1e+09 ms" in decisions[30.0].reason
    # every switch is logged with its reason, the conditions it was made under and its overhead
    switches = list(switcher.history)[1:]
    assert [e.name for e in switches] == [n for i, n in enumerate(expected.values()) if i and n != list(expected.values())[i - 1]]
    for event in switches:
        assert event.reason.startswith(("best accuracy", "latency budget"))
        assert "cpu_load" in event.conditions and "latency_budget_ms" in event.conditions
        assert 0 <= event.overhead_ms < math.inf


def test_concurrent_switch_and_inference_never_mixes_variants(exported_portfolio):
    root, models, _ = exported_portfolio
    switcher = Switcher(root, ("fp32", "int8"), runs=3)
    programs = [(o.name, o.precision) for o in switcher.options()]
    inputs = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    reference = {}
    for program in programs:  # each program's own answer, computed alone
        switcher.switch(*program)
        for i, x in enumerate(inputs):
            reference[program, i] = switcher(x).clone()
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[tuple[str, str]] = []

    def infer(offset: int) -> None:
        try:
            i = offset
            while not done.is_set():
                result = switcher.run(inputs[i % len(inputs)])
                program = (result.name, result.precision)
                assert torch.allclose(result.outputs[0], reference[program, i % len(inputs)], atol=1e-5, rtol=0), program
                seen.append(program)
                i += 1
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)
            done.set()

    threads = [threading.Thread(target=infer, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    switches = 0
    try:  # switch while inferences run, until they have seen enough programs or a deadline passes
        deadline = time.monotonic() + 20
        while (len(seen) < 200 or len(set(seen)) < len(programs)) and not errors and time.monotonic() < deadline:
            switcher.switch(*programs[switches % len(programs)], reason="stress")
            switches += 1
            time.sleep(0.001)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors[0]
    assert len(set(seen)) >= 2 and len(seen) >= 50
    assert sum(e.reason == "stress" for e in switcher.history) == switches


def test_tampered_or_truncated_program_is_rejected(exported_portfolio, tmp_path):
    root = Path(shutil.copytree(exported_portfolio[0], tmp_path / "copy"))
    pte = root / "round-01" / "model.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0x01
    pte.write_bytes(bytes(data))
    with pytest.raises(PortfolioError, match=r"round-01.*fp32.*sha256.*tampered"):
        Switcher(root)
    pte.write_bytes(bytes(data[:-10]))
    with pytest.raises(PortfolioError, match="has 6[0-9]* bytes|bytes, the manifest says"):
        Switcher(root, verify=False)  # even unverified, sizes are checked


PYTHON_PATHS = """
import json, sys
from lightning_shifter.cli import main
from lightning_shifter.portfolio import PortfolioError
from lightning_shifter.runtime import Switcher, load_method
root, outcome = sys.argv[1], {}
for name in ("round-00", "round-01"):
    try:
        load_method(f"{root}/{name}/model.pte")
        outcome[name] = "loaded"
    except PortfolioError as err:
        outcome[name] = str(err)
try:
    Switcher(root)
    outcome["switcher"] = "loaded"
except PortfolioError as err:
    outcome["switcher"] = str(err)
outcome["bench"] = main(["bench", root, "--precisions", "fp32", "--runs", "2", "--no-progress"])
print(json.dumps(outcome))
"""


@pytest.mark.slow  # two fresh Python processes import torch and executorch
def test_a_program_the_runtime_cannot_parse_is_an_error_never_a_crash(exported_portfolio, tmp_path):
    from test_runner import program_that_aborts_the_runtime

    root = Path(shutil.copytree(exported_portfolio[0], tmp_path / "copy"))
    portfolio = Portfolio.open(root)
    damaged = {  # recorded with their own sha256, as a copied or hand-edited portfolio would be
        "round-00": program_that_aborts_the_runtime((root / "round-00" / "model.pte").read_bytes()),  # ET_CHECK
        "round-01": b"\x00\x00\x00\x00\xc3\x28\xff\xfe" * 512,  # its log line is invalid UTF-8: pybind11 aborts
    }
    for name, data in damaged.items():
        portfolio.update_variant(name, files={"fp32": portfolio.write_file(name, "fp32", data)})
    unprotected = subprocess.run(
        [sys.executable, "-c", "import sys; from executorch.runtime import Runtime; "
         "Runtime.get().load_program(sys.argv[1]).load_method('forward')", str(root / "round-01" / "model.pte")],
        capture_output=True, timeout=300)
    assert unprotected.returncode == -6  # SIGABRT: what every Python path did before
    result = subprocess.run([sys.executable, "-c", PYTHON_PATHS, str(root)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert "round-00/model.pte cannot be used: the ExecuTorch runtime cannot load it" in outcome["round-00"]
    assert "round-01/model.pte cannot be used: loading it crashed a trial process (signal 6, SIGABRT" in outcome["round-01"]
    assert "cannot be used" in outcome["switcher"]
    assert outcome["bench"] == 1 and "error: the ExecuTorch program" in result.stderr


def test_trial_loads_are_done_once_per_file(exported_portfolio, tmp_path):
    from lightning_shifter import trial

    root = Path(shutil.copytree(exported_portfolio[0], tmp_path / "copy"))
    calls = []
    real = trial._run_child
    trial._run_child = lambda paths, timeout_s: calls.append(len(paths)) or real(paths, timeout_s)
    try:
        Switcher(root, runs=2)  # every program in one child
        Switcher(root, runs=2)  # unchanged files: none
        pte = root / "round-00" / "model.pte"
        pte.write_bytes(pte.read_bytes())  # rewritten: tried again
        Switcher(root, runs=2)
    finally:
        trial._run_child = real
    assert calls == [2, 1]


def test_unknown_names_and_bad_input_are_rejected(exported_portfolio):
    root = exported_portfolio[0]
    with pytest.raises(PortfolioError, match="no variant named 'nope'.*known variants: round-00, round-01"):
        Switcher(root, variants=["nope"])
    with pytest.raises(SwitchError, match="unknown precision"):
        Switcher(root, "fp16")
    switcher = Switcher(root, "fp32", variants=["round-01"], runs=3)
    with pytest.raises(SwitchError, match=r"no preloaded program 'round-00' at fp32; loaded programs: round-01/fp32"):
        switcher.switch("round-00")
    with pytest.raises(SwitchError, match=r"input of shape \(2, 1, 8, 8\) given; the portfolio's programs take \(1, 1, 8, 8\)"):
        switcher.run(torch.zeros(2, 1, 8, 8))
    assert switcher.active == ("round-01", "fp32") and len(switcher.history) == 1


def test_switcher_needs_exported_programs(tmp_path):
    root = tmp_path / "p"
    build_portfolio(root, {"a": tiny_net(2)})
    with pytest.raises(SwitchError, match="no fp32 programs to load: export the portfolio first"):
        Switcher(root)
    with pytest.raises(SwitchError, match="variant 'a' has no int8 program"):
        Switcher(root, "int8", variants=["a"])


def test_policy_and_signal_names_are_still_importable_from_runtime():
    import lightning_shifter.policy as policy
    import lightning_shifter.runtime as runtime
    import lightning_shifter.signals as signals

    for module in (policy, signals):
        for name in [n for n in dir(module) if n[0].isupper() and isinstance(getattr(module, n), type)]:
            if getattr(module, name).__module__ == module.__name__:
                assert getattr(runtime, name) is getattr(module, name), name



def test_remeasure_records_the_median_or_the_90th_percentile(exported_portfolio, monkeypatch):
    import lightning_shifter.runtime as runtime_module

    root, _, _ = exported_portfolio
    switcher = Switcher(root, ("fp32",), measure=None)
    paced = []
    monkeypatch.setattr(runtime_module, "latency_percentiles",
                        lambda method, inputs, warmup, runs, interval_s: paced.append(interval_s) or (1.0, 3.0))
    assert {o.latency_ms for o in switcher.remeasure(runs=2, interval_s=0.01)} == {1.0}
    assert {o.latency_ms for o in switcher.remeasure(runs=2, interval_s=0.01, percentile=90)} == {3.0}
    assert set(paced) == {0.01}
    with pytest.raises(ValueError, match="percentile must be 50 or 90"):
        switcher.remeasure(percentile=99)
