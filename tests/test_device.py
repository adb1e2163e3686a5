"""The device harness end to end: deploy, bench and switch sessions through adbutils against the
loopback adb server (tests/fake_adb.py): sandboxed x86_64 phones running the host-built runner, an
arm64 phone running the self-contained arm64 bundle through qemu-user, and the local device."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from fake_adb import FakeAdbServer
from runner_build import TinyConvNet, build_runner, export_pte, pattern_input

from lightning_shifter.device import (
    AdbDevice,
    DeviceError,
    DeviceLost,
    DeviceSignal,
    LocalDevice,
    RunnerBuild,
    RunnerError,
    bench,
    collect_facts,
    deploy,
    find_runner_build,
    on_devices,
    read_state,
    switch_session,
)
from lightning_shifter.cli import main
from lightning_shifter.device.builds import shared_libraries
from lightning_shifter.portfolio import Portfolio, Variant
from lightning_shifter.policy import Decision, LatencyBudget
from lightning_shifter.signals import ScheduleSignal

WIDTHS = (16, 8, 4)  # round-00 (dense, most accurate) .. round-02 (smallest)


@pytest.fixture(scope="session")
def runner_build() -> RunnerBuild:
    return RunnerBuild.from_executable("x86_64", build_runner("host"))


@pytest.fixture(scope="session")
def portfolio_template(tmp_path_factory) -> Path:
    """Three real exported variants (fp32; the smallest also int8), written with the Portfolio API."""
    root = tmp_path_factory.mktemp("portfolio")
    portfolio = Portfolio.create(root, input_shape=(1, 1, 8, 8))
    for round_index, width in enumerate(WIDTHS):
        torch.manual_seed(width)
        model = TinyConvNet(width).eval()
        name = f"round-{round_index:02d}"
        files = {"fp32": portfolio.write_file(name, "fp32", export_pte(model, pattern_input()))}
        if round_index == len(WIDTHS) - 1:
            files["int8"] = portfolio.write_file(name, "int8", export_pte(model, pattern_input(), int8=True))
        portfolio.put_variant(Variant(
            name=name, round=round_index, density=0.8**round_index, params=sum(p.numel() for p in model.parameters()),
            macs=1000 * width, files=files, metrics={"val_acc_compacted": 0.95 - 0.02 * round_index}))
    return root


@pytest.fixture
def portfolio(portfolio_template, tmp_path) -> Path:
    """A fresh copy per test: benches write their results into its manifest."""
    return Path(shutil.copytree(portfolio_template, tmp_path / "portfolio"))


@pytest.fixture
def phone(server):
    return server.add_phone("fake-1")


def connect(server, serial="fake-1", **kwargs) -> AdbDevice:
    return AdbDevice(serial, port=server.port, start_server=False, **kwargs)


def sandbox_sha256(phone, device_path: str) -> str:
    return hashlib.sha256(phone.host_path(device_path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- deploy
def test_deploy_pushes_runner_libraries_and_programs_then_skips_matching_files(server, phone, portfolio,
                                                                               runner_build):
    device = connect(server)
    deployment = deploy(device, portfolio, runner=runner_build)
    libraries = sorted(f"lib/{lib.name}" for lib in runner_build.libraries)
    assert "lib/libexecutorch.so" in libraries
    assert sorted(deployment.pushed) == sorted(
        ["bin/shifter_runner", *libraries, "portfolio/manifest.json",
         "portfolio/round-00/model.pte", "portfolio/round-01/model.pte", "portfolio/round-02/model.pte"])
    assert deployment.skipped == []
    opened = Portfolio.open(portfolio)
    for variant in opened.variants:
        assert sandbox_sha256(phone, device.path("portfolio", variant.files["fp32"].path)) == variant.files["fp32"].sha256
    assert not phone.host_path(device.path("portfolio/round-02/model_int8.pte")).exists()  # not asked for

    pushes = len(phone.pushed)
    again = deploy(device, portfolio, runner=runner_build)
    assert again.pushed == [] and len(again.skipped) == len(deployment.pushed)
    assert len(phone.pushed) == pushes

    phone.host_path(device.path("portfolio/round-01/model.pte")).write_bytes(b"stale")
    repaired = deploy(device, portfolio, runner=runner_build)
    assert repaired.pushed == ["portfolio/round-01/model.pte"]


def test_shell_words_are_quoted_everywhere(server, phone, portfolio, runner_build):
    workdir = "/data/local/tmp/odd dir; touch pwned; $(touch pwned2)"
    device = connect(server, workdir=workdir)
    deployment = deploy(device, portfolio, runner=runner_build)
    with deployment.session() as session:
        assert session.loaded == ["round-00", "round-01", "round-02"]
    sandbox = phone.root / "data/local/tmp"
    assert (sandbox / "odd dir; touch pwned; $(touch pwned2)" / "bin/shifter_runner").is_file()
    assert not any(p.name.startswith("pwned") for p in phone.root.rglob("*"))


def test_deploy_retries_a_push_cut_mid_file(server, phone, portfolio, runner_build):
    phone.cut_pushes(after_bytes=3000, times=2)
    deployment = deploy(connect(server), portfolio, runner=runner_build, retry_delay_s=0.05)
    runner = deployment.executable
    assert sandbox_sha256(phone, runner) == hashlib.sha256(runner_build.executable.read_bytes()).hexdigest()
    assert len(deployment.pushed) == 10 and deployment.pushed.count("bin/shifter_runner") == 1
    assert phone.pushed.count(runner) == 1  # two cut attempts, then one complete push


def test_deploy_detects_and_repairs_a_corrupted_push(server, phone, portfolio, runner_build):
    phone.corrupt_pushes(times=1)
    deploy(connect(server), portfolio, runner=runner_build)
    first = phone.pushed[0]
    assert phone.pushed.count(first) == 2  # corrupted, found by sha256sum on the device, pushed again
    assert sandbox_sha256(phone, first) == hashlib.sha256(runner_build.executable.read_bytes()).hexdigest()


def test_deploy_gives_up_with_a_clear_message_and_the_host_portfolio_intact(server, phone, portfolio, runner_build):
    phone.cut_pushes(after_bytes=100, times=1000)
    with pytest.raises(DeviceError, match=r"failed 3 times.*Reconnect the device and deploy again"):
        deploy(connect(server), portfolio, runner=runner_build, retries=2, retry_delay_s=0.01)
    Portfolio.open(portfolio).verify()

    phone.cut_pushes(after_bytes=100, times=0)
    phone.corrupt_pushes(times=1000)
    with pytest.raises(DeviceError, match="still differ from their sha256 after 2 pushes"):
        deploy(connect(server), portfolio, runner=runner_build, retries=1)


def test_full_device_storage_is_reported_before_pushing(server, phone, portfolio, runner_build):
    phone.storage_bytes = 2 * 1024 * 1024  # the libraries alone need more
    with pytest.raises(DeviceError, match=r"not enough storage on fake-1: .* MB to push .* MB free"):
        deploy(connect(server), portfolio, runner=runner_build)
    assert phone.pushed == []


def test_wrong_abi_names_the_missing_build_and_how_to_make_it(server, tmp_path, portfolio):
    server.add_phone("arm-phone", abi="arm64-v8a")
    server.add_phone("old-phone", abi="armeabi-v7a")
    with pytest.raises(DeviceError, match=r"no runner build for ABI arm64-v8a in .*: build it with `lightning-shifter "
                                          r"runner build --target android` \(needs ANDROID_NDK .*\) or `lightning-shifter "
                                          r"runner build --target arm64-bundle` \(needs g\+\+-aarch64-linux-gnu .*no NDK"):
        deploy(connect(server, "arm-phone"), portfolio, build_root=tmp_path / "no-builds")
    with pytest.raises(DeviceError, match="no runner build exists for ABI 'armeabi-v7a'"):
        deploy(connect(server, "old-phone"), portfolio)


def test_runner_build_lists_only_non_system_libraries(runner_build):
    names = [lib.name for lib in runner_build.libraries]
    assert "libexecutorch.so" in names and "libexecutorch_backend_xnnpack.so" in names
    assert not any(name.startswith(("libc.so", "libstdc++", "libm.so")) for name in names)
    assert shared_libraries(runner_build.executable) == list(runner_build.libraries)
    assert find_runner_build("x86_64").executable == runner_build.executable


def test_a_workdir_that_cannot_run_programs_is_explained(server, phone, portfolio, runner_build):
    device = connect(server, workdir="/sdcard/lightning-shifter")  # storage, mounted noexec as on phones
    with pytest.raises(DeviceError, match=r"does not start .*exited with status 126.*mounted noexec .*/data/local/tmp"):
        deploy(device, portfolio, runner=runner_build)


# ---------------------------------------------------------------------------------------- errors
def test_device_selection_errors_say_what_to_do(server, tmp_path, monkeypatch):
    with pytest.raises(DeviceError, match="no device attached: connect a phone with USB debugging"):
        connect(server, None)
    server.add_phone("locked", state="unauthorized")
    with pytest.raises(DeviceError, match="unauthorized: unlock it and accept the 'Allow USB debugging'"):
        connect(server, None)
    server.add_phone("asleep", state="offline")
    with pytest.raises(DeviceError, match="offline: reconnect its cable or run `adb reconnect`"):
        connect(server, "asleep")
    server.add_phone("one")
    assert connect(server, None).id == "one"
    server.add_phone("two")
    with pytest.raises(DeviceError, match=r"2 devices attached \(one, two\): pass serial="):
        connect(server, None)
    with pytest.raises(DeviceError, match=r"device gone is not attached \(attached: .*\): reconnect it"):
        connect(server, "gone")
    assert [d.id for d in AdbDevice.all(port=server.port, start_server=False)] == ["one", "two"]


def test_missing_adb_and_missing_server_are_explained(tmp_path, monkeypatch):
    with socket_port() as port:  # a port nobody listens on
        with pytest.raises(DeviceError, match=rf"no adb server at 127.0.0.1:{port}: start one with `adb -P {port}"):
            AdbDevice(port=port, start_server=False)
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.setenv("ADBUTILS_ADB_PATH", str(tmp_path / "adb"))  # configured, missing: no other adb
        with pytest.raises(DeviceError, match=r"ADBUTILS_ADB_PATH .*/adb is not an executable file"):
            AdbDevice(port=port)


def test_a_vanished_adb_server_is_an_error_not_a_new_server(tmp_path, monkeypatch):
    started = tmp_path / "adb-was-started"
    adb = tmp_path / "adb"
    adb.write_text(f"#!/bin/sh\ntouch {started}\n")
    adb.chmod(0o755)
    monkeypatch.setenv("ADBUTILS_ADB_PATH", str(adb))
    server = FakeAdbServer()
    server.add_phone("fake-1")
    device = connect(server)
    server.close()
    with pytest.raises(DeviceError, match="on device fake-1 failed"):
        device.run(["true"])
    assert not started.exists()  # adbutils alone would have run `adb start-server` and tried again


class socket_port:
    """A free local port, held closed for the duration of the block."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        pass


# ---------------------------------------------------------------------------------------- bench
def test_bench_measures_every_variant_and_records_it_per_device(server, phone, portfolio, runner_build):
    device = connect(server)
    deployment = deploy(device, portfolio, precisions=("fp32", "int8"), runner=runner_build)
    result = bench(device, portfolio, precisions=("fp32", "int8"), runs=10, reloads=2, deployment=deployment)

    assert [(v.name, v.precision) for v in result.variants] == [
        ("round-00", "fp32"), ("round-01", "fp32"), ("round-02", "fp32"), ("round-02", "int8")]
    for v in result.variants:
        assert 0 < v.p50_ms <= v.p90_ms <= v.p99_ms
        assert v.load_ms > 0 and v.reload_ms > 0 and 0 < v.alone_rss_kb <= v.alone_peak_rss_kb
        assert v.switch_speedup > 1  # a preloaded switch beats loading from storage
    assert result.facts["model"] == "FakePhone" and result.facts["cores"] == 4
    assert result.facts["governor"] == "schedutil" and result.facts["battery_percent"] == 80.0
    fp32 = result.memory["fp32"]
    assert fp32["dense"] == "round-00" and fp32["variants"] == 3
    assert fp32["ratio"] == pytest.approx(fp32["portfolio_rss_kb"] / fp32["dense_rss_kb"])
    assert fp32["peak_ratio"] == pytest.approx(fp32["portfolio_peak_rss_kb"] / fp32["dense_peak_rss_kb"])
    assert fp32["dense_rss_kb"] == result.variants[0].alone_rss_kb
    assert fp32["ratio"] >= 1.0  # the whole portfolio holds at least the dense model

    saved = Portfolio.open(portfolio)
    for v in result.variants:
        on_device = saved[v.name].devices["fake-1"]
        assert on_device[v.precision]["p50_ms"] == v.p50_ms
        assert on_device["facts"]["abi"] == "x86_64"
    assert saved.extra["devices"]["fake-1"]["fp32"]["dense"] == "round-00"
    assert "switch vs reload" in [c.header for c in result.table().columns]


def test_bench_resumes_after_a_dropped_session(server, phone, portfolio, runner_build):
    device = connect(server)
    deployment = deploy(device, portfolio, runner=runner_build)
    phone.cut_sessions(after_input_lines=3)  # mid-way through the second variant
    result = bench(device, portfolio, runs=5, reloads=1, deployment=deployment, retry_delay_s=0.05)
    assert [v.name for v in result.variants] == ["round-00", "round-01", "round-02"]


def test_bench_gives_up_keeping_what_was_measured(server, phone, portfolio, runner_build):
    device = connect(server)
    deployment = deploy(device, portfolio, runner=runner_build)
    phone.cut_sessions(after_input_lines=3, times=1000)
    with pytest.raises(DeviceLost, match=r"(?s)lost the runner on fake-1 .*gave up on fake-1 after 2 attempts") as info:
        bench(device, portfolio, runs=5, reloads=1, deployment=deployment, retries=1, retry_delay_s=0.05)
    measured = [v.name for v in info.value.partial.variants]
    assert measured == ["round-00", "round-01"]  # one variant per session before each drop
    saved = Portfolio.open(portfolio)
    assert [n for n in saved.names if "fake-1" in saved[n].devices] == measured


def test_bench_on_several_devices_at_once(server, tmp_path, portfolio, runner_build):
    phones = [server.add_phone(f"fake-{i}") for i in range(2)]
    devices = [connect(server, p.serial) for p in phones]
    results = on_devices(devices, bench, portfolio, runs=5, reloads=1)
    assert set(results) == {"fake-0", "fake-1"}
    assert all(len(r.variants) == 3 for r in results.values()), results
    saved = Portfolio.open(portfolio)
    for variant in saved.variants:  # no thread's results overwrote the other's
        assert set(variant.devices) == {"fake-0", "fake-1"}


def test_cli_shows_what_was_measured_before_the_device_was_lost(server, phone, portfolio, runner_build, capsys):
    phone.cut_sessions(after_input_lines=3, times=1000)  # every runner session drops mid-way
    build_root = runner_build.executable.parent.parent
    assert main(["device", "bench", str(portfolio), "--adb-port", str(server.port), "--build-root", str(build_root),
                 "--runs", "5", "--reloads", "1"]) == 1
    out, err = capsys.readouterr()
    assert "gave up on fake-1" in err and "measured above before the device was lost" in out
    saved = Portfolio.open(portfolio)
    measured = [n for n in saved.names if "fake-1" in saved[n].devices]
    assert measured and all(name in out for name in measured)  # the table shows what the manifest kept


# ---------------------------------------------------------------------------------------- sessions
class ThermalThrottle:
    """A device policy: the latency budget when cool, the fastest program when hot."""

    def __init__(self, limit_c: float) -> None:
        self.limit_c = limit_c
        self.budget = LatencyBudget()

    def choose(self, options, conditions):
        if conditions.get("thermal_c", 0.0) >= self.limit_c:
            fastest = min(options, key=lambda o: o.latency_ms)
            return Decision(fastest.name, fastest.precision, f"thermal {conditions['thermal_c']:g} C")
        return self.budget.choose(options, conditions)


def test_switch_session_follows_a_budget_schedule_and_device_temperature(server, phone, portfolio, runner_build):
    device = connect(server)
    deployment = deploy(device, portfolio, runner=runner_build)
    bench(device, portfolio, runs=10, reloads=1, deployment=deployment)  # device latencies for the options
    schedule = ScheduleSignal("latency_budget_ms", [(0.0, 1000.0), (1.0, 0.0), (2.0, 1000.0)])

    def heat_up_when_back_to_the_dense_model(event):
        if event.name == "round-00" and event.previous is not None:
            phone.set_temperature("cpu-0", 85.0)

    seen = []
    report = switch_session(device, portfolio, ThermalThrottle(limit_c=70.0),
                            [schedule, DeviceSignal(device, min_interval_s=0.05)], duration_s=3.0,
                            deployment=deployment, on_switch=lambda e: (seen.append(e), heat_up_when_back_to_the_dense_model(e)))
    assert seen == report.switches
    cool, cut, restored, hot = report.switches  # exactly these four, each reported once
    assert (cool.previous, cool.name, cool.time_s < 1.0) == (None, "round-00", True)  # most accurate fits
    assert cool.conditions["latency_budget_ms"] == 1000.0 and cool.conditions["thermal_c"] == 40.0
    assert cut.previous == ("round-00", "fp32") and cut.name != "round-00" and 1.0 <= cut.time_s < 2.0
    assert "latency budget 0 ms unmet" in cut.reason
    assert restored.name == "round-00" and restored.time_s >= 2.0
    assert hot.name != "round-00" and hot.reason == "thermal 85 C" and hot.conditions["thermal_c"] == 85.0
    assert all(s.switch_us >= 0 for s in report.switches)
    assert report.inferences == sum(len(v) for v in report.latency_ms.values()) > 10
    assert report.latency_ms["round-00/fp32"]


def test_hot_device_switches_to_the_fastest_program(server, phone, portfolio, runner_build):
    device = connect(server)
    deployment = deploy(device, portfolio, runner=runner_build)
    phone.set_temperature("cpu-0", 90.0)
    report = switch_session(device, portfolio, ThermalThrottle(limit_c=70.0), [DeviceSignal(device)],
                            duration_s=0.5, deployment=deployment)
    (only,) = report.switches  # timed on the device first (no latencies in the manifest), then chosen
    assert only.reason == "thermal 90 C" and only.conditions["thermal_c"] == 90.0
    assert read_state(device)["thermal_zones_c"] == {"cpu-0": 90.0, "battery": 30.0}


def test_switch_session_reconnects_after_a_drop(server, phone, portfolio, runner_build):
    device = connect(server)
    deployment = deploy(device, portfolio, runner=runner_build)
    phone.cut_sessions(after_input_lines=20)
    report = switch_session(device, portfolio, LatencyBudget(), [ScheduleSignal("latency_budget_ms", [(0, 1e3)])],
                            duration_s=1.0, deployment=deployment, retry_delay_s=0.05)
    # the new connection starts with no program chosen, so the choice is made (and reported) again
    assert [s.name for s in report.switches] == ["round-00", "round-00"]
    assert report.inferences > 20


# ---------------------------------------------------------------------------------------- arm64 without an NDK
@pytest.fixture(scope="session")
def arm64_builds(tmp_path_factory) -> Path:
    """A build folder holding only the arm64 bundle (``mobile/build.sh arm64-bundle``), as on a machine
    without an NDK."""
    launcher = build_runner("arm64-bundle")
    root = tmp_path_factory.mktemp("builds")
    (root / "arm64-bundle").symlink_to(launcher.parent.parent, target_is_directory=True)
    return root


@pytest.mark.slow
def test_arm64_phone_without_an_ndk_runs_the_bundle_from_deploy_to_report(server, portfolio, arm64_builds, tmp_path,
                                                                          monkeypatch, capsys):
    """The README's commands against a stock arm64 phone: sandboxed, aarch64 programs through qemu-user,
    no aarch64 library but the bundle's, the adb server's port from ANDROID_ADB_SERVER_PORT."""
    phone = server.add_phone("arm-1", abi="arm64-v8a", model="Pixel Loop")
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(server.port))
    target = [str(portfolio), "--build-root", str(arm64_builds)]
    assert main(["device", "deploy", *target, "--precisions", "fp32", "int8"]) == 0
    workdir = "/data/local/tmp/lightning-shifter"
    assert phone.host_path(f"{workdir}/bin/shifter_runner").read_text().startswith("#!/system/bin/sh")
    assert phone.host_path(f"{workdir}/lib/ld-linux-aarch64.so.1").is_file()

    deployment = deploy(AdbDevice("arm-1", start_server=False), portfolio, ("fp32", "int8"), build_root=arm64_builds)
    assert deployment.pushed == []  # the CLI's deployment is complete: every sha256 matches on the phone
    with deployment.session() as session:
        assert session.loaded == ["round-00", "round-01", "round-02"]
        assert session.ready["isolation"] == "subprocess"  # the trial child started through the bundled loader
        assert all(v["check_ms"] > 0 for v in session.ready["variants"].values())

    assert main(["device", "bench", *target, "--precisions", "fp32", "int8", "--warmup", "1", "--runs", "10",
                 "--reloads", "1"]) == 0
    assert "arm-1: Pixel Loop, arm64-v8a" in capsys.readouterr().out
    saved = Portfolio.open(portfolio)
    for variant in saved.variants:
        measured = variant.devices["arm-1"]
        assert measured["facts"]["machine"] == "aarch64" and measured["facts"]["memory_mb"] == 7680
        assert 0 < measured["fp32"]["p50_ms"] <= measured["fp32"]["p90_ms"] and measured["fp32"]["alone_rss_kb"] > 0
    assert saved["round-02"].devices["arm-1"]["int8"]["p50_ms"] > 0
    assert saved.extra["devices"]["arm-1"]["fp32"]["dense"] == "round-00"

    log = tmp_path / "session.json"
    assert main(["device", "switch", *target, "--duration", "3", "--budget", "0:1000,1:0,2:1000",
                 "--session-out", str(log)]) == 0
    events = json.loads(log.read_text())["events"]
    switches = [e for e in events if "switch_us" in e]
    assert events[0]["variant"] == "round-00" and switches[0]["variant"] != "round-00"  # the budget cut at 1 s
    assert switches[-1]["variant"] == "round-00" and all(e["switch_us"] >= 0 for e in switches)
    assert main(["report", str(portfolio), "--out", str(tmp_path / "report"), "--session", str(log)]) == 0
    page = (tmp_path / "report/index.html").read_text()
    median = sorted(e["switch_us"] for e in switches)[len(switches) // 2]
    assert f"{len(switches)} switches, overhead median {median:.1f} us" in page


@pytest.mark.slow
def test_arm64_devices_use_an_ndk_build_where_one_exists_else_the_bundle_built_automatically(tmp_path, monkeypatch):
    checkout_builds = build_runner("aarch64").parent.parent  # downloads the aarch64 SDK once, beside it
    monkeypatch.setenv("SHIFTER_DOWNLOAD_DIR", str(checkout_builds.parent))
    root = tmp_path / "builds"
    monkeypatch.setenv("SHIFTER_BUILD_DIR", str(root))
    built: list[str] = []
    ndk_build = root / "android" / "shifter_runner"  # an arm64 ELF in the NDK build's place
    ndk_build.parent.mkdir(parents=True)
    shutil.copy2(checkout_builds / "aarch64" / "shifter_runner", ndk_build)
    assert find_runner_build("arm64-v8a", progress=built.append).executable == ndk_build
    assert built == [] and not (root / "arm64-bundle").exists()  # preferred as it is: nothing built

    ndk_build.unlink()
    bundle = find_runner_build("arm64-v8a", progress=built.append)
    assert bundle.executable == root / "arm64-bundle" / "bin" / "shifter_runner"
    assert built == [f"building the native runner (arm64-bundle) into {root / 'arm64-bundle'}: done once, takes a "
                     "minute or two"]
    names = {lib.name for lib in bundle.libraries}
    assert {"ld-linux-aarch64.so.1", "libc.so.6", "libexecutorch.so", "shifter_runner-aarch64"} <= names
    times = {lib: lib.stat().st_mtime_ns for lib in bundle.libraries}
    assert find_runner_build("arm64-v8a", progress=built.append) == bundle and len(built) == 1
    assert {lib: lib.stat().st_mtime_ns for lib in bundle.libraries} == times  # up to date: files kept as they were

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "aarch64").write_text("a file where the aarch64 build folder goes")
    monkeypatch.setenv("SHIFTER_BUILD_DIR", str(broken))
    with pytest.raises(DeviceError, match=r"the native runner \(arm64-bundle\) could not be built: .*; alternatively: "
                                          r"`lightning-shifter runner build --target android` \(needs ANDROID_NDK"):
        find_runner_build("arm64-v8a", progress=None)


# ---------------------------------------------------------------------------------------- local
def test_local_device_runs_the_same_harness(tmp_path, portfolio, runner_build):
    device = LocalDevice(tmp_path / "local", device_id="laptop")
    deployment = deploy(device, portfolio, runner=runner_build)
    assert (tmp_path / "local/bin/shifter_runner").stat().st_mode & 0o111
    result = bench(device, portfolio, runs=5, reloads=1, deployment=deployment)
    assert len(result.variants) == 3 and "laptop" in Portfolio.open(portfolio)["round-01"].devices
    assert collect_facts(device)["cores"] >= 1

    with deployment.session() as session:
        with pytest.raises(RunnerError, match="unknown variant 'nope'"):
            session.switch("nope")
        assert session.switch("round-02")["variant"] == "round-02"  # still serving
        assert session.infer(n=2)["n"] == 2
        session.request("quit")
        with pytest.raises(DeviceError, match="the runner exited with status 0"):
            session.stats()


def test_switch_session_chooses_only_among_the_given_variants(tmp_path, portfolio, runner_build):
    device = LocalDevice(tmp_path / "local")
    deployment = deploy(device, portfolio, runner=runner_build)
    budget = ScheduleSignal("latency_budget_ms", [(0.0, 1000.0)])  # everything fits: the most accurate wins
    report = switch_session(device, portfolio, LatencyBudget(), [budget], duration_s=0.3, deployment=deployment,
                            variants=["round-01", "round-02"])
    assert {s.name for s in report.switches} <= {"round-01", "round-02"} and report.switches
    with pytest.raises(DeviceError, match=r"variant\(s\) \['nope'\]"):
        switch_session(device, portfolio, LatencyBudget(), [budget], duration_s=0.1, deployment=deployment,
                       variants=["nope"])


def test_runner_that_cannot_start_reports_why(tmp_path, portfolio, runner_build):
    device = LocalDevice(tmp_path / "local")
    deployment = deploy(device, portfolio, runner=runner_build)
    (tmp_path / "local/portfolio/manifest.json").write_text("{broken")
    with pytest.raises(DeviceError, match="the runner on .* could not start: .*manifest"):
        deployment.session()


def test_local_device_quotes_nothing_because_nothing_is_a_shell(tmp_path):
    device = LocalDevice(tmp_path)
    assert device.run(["echo", "a; rm -rf /", "$HOME"]).stdout == "a; rm -rf / $HOME\n"
    assert device.run(["definitely-not-a-command"]).returncode == 127
    assert device.free_bytes(str(tmp_path / "not/yet/there")) > 0


def test_device_signal_reads_battery_and_caches_between_polls(server, phone):
    device = connect(server)
    signal = DeviceSignal(device, min_interval_s=60.0)
    assert signal.read() == {"thermal_c": 40.0, "battery_percent": 80.0, "charging": 0.0}
    phone.set_battery(15, 33.0, charging=True)
    assert signal.read()["battery_percent"] == 80.0  # within the interval: no device round trip
    signal.min_interval_s = 0.0
    assert signal.read() == {"thermal_c": 40.0, "battery_percent": 15.0, "charging": 1.0}
    state = read_state(device)
    assert state["battery_temperature_c"] == 33.0
    started = time.monotonic()
    facts = collect_facts(device)
    assert time.monotonic() - started < 10
    assert facts["max_freq_khz"] == [1804800, 2204800] and facts["android_release"] == "14"
