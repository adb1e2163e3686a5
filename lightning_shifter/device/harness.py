"""Deploy a portfolio to devices, benchmark it there, and run switching sessions.

* :func:`deploy` pushes the runner built for the device's ABI (for an arm64 phone without an NDK
  build, the self-contained arm64 bundle), its shared libraries, a manifest and the variants'
  programs into the device's work directory, skipping files whose sha256 already matches there,
  verifies every file's sha256 on the device, and checks that the runner starts there.
* :func:`bench` measures, per variant, load time, first inference, latency percentiles, peak memory,
  and the switching overhead (a preloaded switch vs loading the variant from storage), plus the
  memory of the whole portfolio vs one dense model, and device facts collected once; each variant's
  results are written to the manifest (``variant.devices[<device id>]``) as soon as they are measured.
* :func:`switch_session` runs inference continuously on the device while a policy from
  :mod:`lightning_shifter.policy` picks the variant as conditions change, and reports every switch.
* :func:`on_devices` runs any of them on several devices at once, one thread per device.

A device that drops off mid-run is waited for and the step retried; when it does not come back the
:class:`DeviceLost` error carries everything measured so far (also already saved in the manifest).

Example::

    >>> import tempfile
    >>> from lightning_shifter.device import LocalDevice, bench
    >>> device = LocalDevice(tempfile.mkdtemp())
    >>> result = bench(device, "portfolio/")        # doctest: +SKIP
    >>> rich.print(result.table())                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lightning_shifter.device.builds import RunnerBuild, find_runner_build
from lightning_shifter.device.facts import collect_facts
from lightning_shifter.device.runner import RunnerSession, check_request_value
from lightning_shifter.device.transport import Device, DeviceError, wait_for
from lightning_shifter.policy import Option, Policy
from lightning_shifter.portfolio import MANIFEST_NAME, PRECISIONS, SCHEMA_VERSION, Portfolio, PortfolioError, sha256_file
from lightning_shifter.signals import Signal

log = logging.getLogger(__name__)

_MANIFEST_LOCK = threading.Lock()  # one manifest writer at a time across device threads


class DeviceLost(DeviceError):
    """A device went away and did not come back; ``partial`` holds what was measured before."""

    def __init__(self, message: str, partial: Any) -> None:
        super().__init__(message)
        self.partial = partial


# ---------------------------------------------------------------------------------------- deploy
@dataclass(frozen=True)
class _File:
    source: Path | bytes  # a local file, or the content itself (the device manifest)
    remote: str  # relative to the device's work directory
    sha256: str
    size: int
    mode: int = 0o644


@dataclass
class Deployment:
    """Where a portfolio lives on a device, and what :func:`deploy` pushed to get it there."""

    device: Device
    executable: str
    library_dir: str
    portfolio_dir: str
    precisions: tuple[str, ...]
    variants: dict[str, tuple[str, ...]]  # precision -> variants that have a program of it
    pushed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_pushed: int = 0
    files: list[_File] = field(default_factory=list, repr=False)

    def verify(self, retries: int = 1, retry_delay_s: float = 1.0) -> None:
        """Check every deployed file's sha256 on the device again, pushing any that changed."""
        _push_verified(self.device, self.files, self, retries, retry_delay_s)

    def session(self, precision: str = "fp32", variants: Sequence[str] | None = None,
                **options: Any) -> RunnerSession:
        """Start the runner on the deployed portfolio."""
        if precision not in self.precisions:
            raise DeviceError(f"{precision} programs were not deployed (deployed: {', '.join(self.precisions)}); "
                              f"deploy with precisions=({precision!r},)")
        log_path = posixpath.join(self.device.workdir, "logs", f"runner-{precision}.log")
        return RunnerSession(self.device, self.executable, self.portfolio_dir, precision, variants,
                             library_dir=self.library_dir, log_path=log_path, **options)


def _open(portfolio: Portfolio | str | os.PathLike) -> Portfolio:
    return portfolio if isinstance(portfolio, Portfolio) else Portfolio.open(portfolio, verify="size")


def _device_manifest(portfolio: Portfolio, roles: Sequence[str]) -> dict[str, Any]:
    """The manifest as the device gets it: only the pushed programs, no measurements (so it stays
    byte-identical between runs and is not pushed again)."""
    variants = []
    for variant in portfolio.variants:
        files = {role: entry.to_json() for role, entry in variant.files.items() if role in roles}
        if files:
            variants.append({"name": variant.name, "round": variant.round, "density": variant.density,
                             "params": variant.params, "macs": variant.macs, "files": files})
    return {"schema_version": SCHEMA_VERSION, "input": {"shape": list(portfolio.input_shape), "dtype": portfolio.input_dtype},
            "variants": variants}


def deploy(device: Device, portfolio: Portfolio | str | os.PathLike, precisions: Sequence[str] = ("fp32",),
           runner: RunnerBuild | None = None, build_root: str | os.PathLike | None = None,
           retries: int = 3, retry_delay_s: float = 1.0) -> Deployment:
    """Push the runner, its libraries and the portfolio's programs to ``device`` and verify them.

    Args:
        device: the target.
        portfolio: a portfolio directory or an open :class:`~lightning_shifter.portfolio.Portfolio`.
        precisions: which programs to push (``"fp32"``, ``"int8"``).
        runner: the build to push (default: :func:`~lightning_shifter.device.find_runner_build` for the
            device's ABI: the builds in ``build_root`` as they are, or without it the package's own,
            built on first need where the ABI has an automatic target).
        build_root: a folder of runner builds to use as they are (see ``runner``).
        retries: how often a dropped connection or a corrupted file is retried before giving up.

    Example (the lines that push need a runner built with ``mobile/build.sh``)::

        >>> import tempfile
        >>> from lightning_shifter.device import LocalDevice, deploy
        >>> device = LocalDevice(tempfile.mkdtemp())  # or AdbDevice() for the phone attached
        >>> deployment = deploy(device, "portfolio/", precisions=("fp32", "int8"))  # doctest: +SKIP
        >>> deployment.pushed  # doctest: +SKIP
        ['bin/shifter_runner', 'lib/libexecutorch.so', 'portfolio/round-00/model.pte', ...]
        >>> deploy(device, "portfolio/", precisions=("fp32", "int8")).pushed  # doctest: +SKIP
        []
        >>> with deployment.session("int8") as runner:  # doctest: +SKIP
        ...     runner.switch("round-03")["switch_us"]
        0.21
    """
    portfolio = _open(portfolio)
    precisions = tuple(precisions)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"precisions must be some of {PRECISIONS}, got {precisions!r}")
    available = {p: tuple(v.name for v in portfolio.variants if p in v.files) for p in precisions}
    missing = [p for p, names in available.items() if not names]
    if missing:
        raise PortfolioError(f"{portfolio.root} has no {'/'.join(missing)} programs: export the portfolio first "
                             "(lightning_shifter.export_portfolio or the ExecuTorchExport callback)")
    abi = device.abi
    build = runner or find_runner_build(abi, build_root)
    if build.abi != abi:
        raise DeviceError(f"the runner build is for {build.abi} but {device.id} is {abi}: pass the build for {abi}")

    manifest = (json.dumps(_device_manifest(portfolio, precisions), indent=2) + "\n").encode()
    files = [_File(build.executable, "bin/shifter_runner", sha256_file(build.executable),
                   build.executable.stat().st_size, 0o755)]
    files += [_File(lib, f"lib/{lib.name}", sha256_file(lib), lib.stat().st_size, 0o755) for lib in build.libraries]
    for precision in precisions:
        for name in available[precision]:
            local = portfolio.verify_file(name, precision)  # never push a file that is corrupt on the host
            entry = portfolio[name].files[precision]
            files.append(_File(local, f"portfolio/{entry.path}", entry.sha256, entry.bytes))
    # last, so that a deploy cut short never leaves a manifest listing programs not yet there
    files.append(_File(manifest, f"portfolio/{MANIFEST_NAME}", hashlib.sha256(manifest).hexdigest(), len(manifest)))
    deployment = Deployment(device, device.path("bin", "shifter_runner"), device.path("lib"),
                            device.path("portfolio"), precisions, available, files=files)
    _push_verified(device, files, deployment, retries, retry_delay_s)
    deployment.skipped = [f.remote for f in files if f.remote not in deployment.pushed]
    _check_runner_starts(deployment)
    log.info("deployed %s to %s: %d files pushed (%.1f MB), %d already there", portfolio.root, device.id,
             len(deployment.pushed), deployment.bytes_pushed / 1e6, len(deployment.skipped))
    return deployment


def _push_verified(device: Device, plan: list[_File], deployment: Deployment, retries: int,
                   delay_s: float) -> None:
    """Push what does not match on the device, up to ``retries + 1`` rounds, each verified by sha256."""
    root = device.workdir
    stale = plan
    for attempt in range(retries + 2):  # a hash before every push round, and one after the last
        try:
            remote = device.sha256(root, [f.remote for f in plan])
            stale = [f for f in plan if remote.get(f.remote) != f.sha256]
            if not stale:
                return
            if attempt == retries + 1:
                break
            _remove(device, root, [f.remote for f in stale if f.remote in remote])
            _check_space(device, root, stale)
            for item in stale:
                try:
                    _push(device, item)
                except DeviceError:
                    _check_space(device, root, stale[stale.index(item):])  # a full device fails pushes too
                    raise
                if item.remote not in deployment.pushed:
                    deployment.pushed.append(item.remote)
                deployment.bytes_pushed += item.size
        except _StorageFull:
            raise
        except DeviceError as err:
            if attempt >= retries:
                raise DeviceError(
                    f"deploying to {device.id} failed {attempt + 1} times, last: {err}. Reconnect the device and "
                    "deploy again: files already on it that match are not pushed again"
                ) from err
            log.warning("deploying to %s: %s; retrying (%d of %d)", device.id, err, attempt + 1, retries)
            wait_for(device, attempts=10, delay_s=delay_s)
    raise DeviceError(
        f"{', '.join(f.remote for f in stale)} on {device.id} still differ from their sha256 after "
        f"{retries + 1} pushes: the device's storage or the connection corrupts data; try another cable or port"
    )


class _StorageFull(DeviceError):
    pass


def _check_runner_starts(deployment: Deployment) -> None:
    """Start the deployed runner once (``--version``), so that a device that cannot execute it fails
    here with the reason rather than later in a session."""
    device = deployment.device
    result = device.run([deployment.executable, "--version"], env={"LD_LIBRARY_PATH": deployment.library_dir})
    if result.returncode == 0 and '"runner"' in result.stdout:
        return
    detail = (result.stderr or result.stdout).strip()[-400:] or "(no output)"
    if result.returncode == 126:  # found but not executable: a noexec mount, or a lost execute bit
        remedy = (f"{device.workdir} is on a file system mounted noexec (on Android: /sdcard and /storage) or "
                  "the files lost their execute permission; use a work folder under /data/local/tmp")
    elif result.returncode == 127:
        remedy = (f"a file it needs is missing on the device, or the build is not for {device.abi}: deploy again, "
                  "and check the build (mobile/build.sh)")
    else:
        remedy = "see the error above; mobile/README.md lists what the runner needs"
    raise DeviceError(f"the runner deployed to {device.id} does not start (`{deployment.executable} --version` "
                      f"exited with status {result.returncode}: {detail}): {remedy}")


def _push(device: Device, item: _File) -> None:
    if isinstance(item.source, Path):
        device.push(item.source, device.path(item.remote), item.mode)
        return
    with tempfile.TemporaryDirectory(prefix="shifter-deploy-") as scratch:
        local = Path(scratch) / posixpath.basename(item.remote)
        local.write_bytes(item.source)
        device.push(local, device.path(item.remote), item.mode)


def _remove(device: Device, root: str, relative: list[str]) -> None:
    if relative:
        device.run(["rm", "-f", "--", *relative], cwd=root).check(f"removing outdated files on {device.id}")


def _check_space(device: Device, root: str, files: Sequence[_File]) -> None:
    need = sum(f.size for f in files)
    free = device.free_bytes(root)
    if free is not None and need > free:
        raise _StorageFull(
            f"not enough storage on {device.id}: {need / 1e6:.1f} MB to push into {root}, {free / 1e6:.1f} MB free. "
            "Free some space on the device (delete files under /data/local/tmp or /sdcard) and deploy again"
        )


# ---------------------------------------------------------------------------------------- bench
@dataclass(frozen=True)
class VariantBench:
    """One variant at one precision measured on a device (times in ms, memory in KiB)."""

    name: str
    precision: str
    load_ms: float
    first_infer_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    reload_ms: float  # median time to load the program again from storage
    reload_first_infer_ms: float
    switch_us: float  # a switch between preloaded variants
    alone_rss_kb: int | None = None  # resident memory of the runner holding only this variant
    alone_peak_rss_kb: int | None = None  # its peak, which includes the transient of loading

    @property
    def switch_speedup(self) -> float:
        """How many times cheaper a preloaded switch is than loading the variant from storage."""
        return self.reload_ms * 1e3 / self.switch_us if self.switch_us > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["name"], data["precision"]
        speedup = self.switch_speedup
        data["switch_speedup"] = speedup if speedup != float("inf") else None
        return data


@dataclass
class DeviceBench:
    """Everything :func:`bench` measured on one device."""

    device_id: str
    facts: dict[str, Any]
    variants: list[VariantBench] = field(default_factory=list)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)  # precision -> portfolio vs dense

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "facts": self.facts,
                "variants": [{"name": v.name, "precision": v.precision, **v.to_json()} for v in self.variants],
                "memory": self.memory}

    def table(self) -> Any:
        """A rich table: latency, switching and memory per variant (DESIGN.md section 5)."""
        from rich.table import Table

        facts = self.facts
        title = (f"{self.device_id}: {facts.get('model', '?')}, {facts.get('abi', '?')}, "
                 f"{facts.get('cores', '?')} cores, governor {facts.get('governor', '?')}")
        table = Table(title=title)
        for column in ("variant", "prec", "load ms", "p50 ms", "p90 ms", "reload ms", "switch us",
                       "switch vs reload", "RSS MB alone", "peak RSS MB alone"):
            table.add_column(column, justify="left" if column in ("variant", "prec") else "right")
        for v in self.variants:
            table.add_row(v.name, v.precision, f"{v.load_ms:.2f}", f"{v.p50_ms:.3f}", f"{v.p90_ms:.3f}",
                          f"{v.reload_ms:.2f}", f"{v.switch_us:.4f}", f"{v.switch_speedup:,.0f}x",
                          _megabytes(v.alone_rss_kb), _megabytes(v.alone_peak_rss_kb))
        for precision, memory in self.memory.items():
            table.add_row("[b]whole portfolio[/b]", precision, "", "", "", "", "", "",
                          f"{_megabytes(memory['portfolio_rss_kb'])} ({memory['ratio']:.2f}x {memory['dense']})",
                          f"{_megabytes(memory['portfolio_peak_rss_kb'])} ({memory['peak_ratio']:.2f}x)")
        return table


def _megabytes(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f}"


def bench(device: Device, portfolio: Portfolio | str | os.PathLike, precisions: Sequence[str] = ("fp32",),
          warmup: int = 5, runs: int = 50, reloads: int = 5, deployment: Deployment | None = None,
          record: bool = True, retries: int = 2, retry_delay_s: float = 1.0,
          timeout_s: float = 120.0) -> DeviceBench:
    """Measure every variant of ``portfolio`` on ``device`` (deploying it first unless given).

    With ``record`` each variant's results go into the manifest as soon as they are measured:
    ``variant.devices[device.id] = {"facts": ..., "<precision>": {...}}``; the portfolio-wide
    memory figures go to the manifest's top-level ``devices[device.id]``. ``warmup``, ``runs`` and
    ``reloads`` are checked against the runner's limits
    (:data:`~lightning_shifter.device.runner.REQUEST_LIMITS`) before anything is deployed.

    Example (the lines that measure need a runner built with ``mobile/build.sh``)::

        >>> import tempfile
        >>> import rich
        >>> from lightning_shifter.device import LocalDevice, bench
        >>> from lightning_shifter.portfolio import Portfolio
        >>> device = LocalDevice(tempfile.mkdtemp(), device_id="laptop")
        >>> result = bench(device, "portfolio/", runs=20)  # doctest: +SKIP
        >>> [(v.name, v.p50_ms < v.reload_ms) for v in result.variants]  # doctest: +SKIP
        [('round-00', True), ('round-01', True), ('round-02', True)]
        >>> Portfolio.open("portfolio/")["round-02"].devices["laptop"]["fp32"]["p50_ms"]  # doctest: +SKIP
        0.042
        >>> rich.print(result.table())  # doctest: +SKIP
    """
    for name, value in (("warmup", warmup), ("runs", runs), ("reloads", reloads)):
        check_request_value(name, value)
    portfolio = _open(portfolio)
    deployment = deployment or deploy(device, portfolio, precisions, retries=retries, retry_delay_s=retry_delay_s)
    result = DeviceBench(device.id, collect_facts(device))
    for precision in precisions:
        names = list(deployment.variants.get(precision, ()))
        if not names:
            raise DeviceError(f"no {precision} programs are deployed on {device.id}; deploy with precisions=({precision!r},)")
        dense = max(names, key=lambda n: (portfolio[n].params, -portfolio[n].round))
        pending = list(names)
        measured: dict[str, VariantBench] = {}

        def latency_and_switching(session: RunnerSession) -> None:
            while pending:
                name = pending[0]
                run = session.bench(name, warmup=warmup, runs=runs)
                reload = session.bench_reload(name, runs=reloads)
                measured[name] = VariantBench(
                    name, precision, run["load_ms"], run["first_infer_ms"], run["p50_ms"], run["p90_ms"],
                    run["p99_ms"], run["mean_ms"], reload["load_p50_ms"], reload["first_infer_p50_ms"],
                    reload["switch_us"])
                result.variants.append(measured[name])
                if record:
                    _record_variant(portfolio, device.id, result.facts, measured[name])
                pending.pop(0)

        _with_sessions(deployment, precision, None, latency_and_switching, retries, retry_delay_s, timeout_s, result)
        # Memory in sessions of their own: a reload above leaves its transient copy in the peak.
        rss, peak = _memory(deployment, precision, names, retries, retry_delay_s, timeout_s, result)
        summary: dict[str, Any] = {"portfolio_rss_kb": rss, "portfolio_peak_rss_kb": peak}
        for index, variant_bench in enumerate(result.variants):
            if variant_bench.precision != precision:
                continue
            rss, peak = _memory(deployment, precision, [variant_bench.name], retries, retry_delay_s, timeout_s, result)
            result.variants[index] = replace(variant_bench, alone_rss_kb=rss, alone_peak_rss_kb=peak)
            if record:
                _record_variant(portfolio, device.id, result.facts, result.variants[index])
            if variant_bench.name == dense:
                summary.update(dense=dense, dense_rss_kb=rss, dense_peak_rss_kb=peak)
        summary["variants"] = len(names)
        summary["ratio"] = summary["portfolio_rss_kb"] / summary["dense_rss_kb"]
        summary["peak_ratio"] = summary["portfolio_peak_rss_kb"] / summary["dense_peak_rss_kb"]
        result.memory[precision] = summary
        if record:
            _record_summary(portfolio, device.id, result.facts, precision, summary)
    return result


def _memory(deployment: Deployment, precision: str, names: Sequence[str], retries: int, delay_s: float,
            timeout_s: float, partial: Any) -> tuple[int, int]:
    """Resident and peak resident memory (KiB) of the runner holding ``names``, after one inference
    of each."""
    stats: list[dict[str, Any]] = []

    def measure(session: RunnerSession) -> None:
        for name in names:
            session.bench(name, warmup=0, runs=1)
        stats.append(session.stats())

    _with_sessions(deployment, precision, names, measure, retries, delay_s, timeout_s, partial)
    return stats[-1]["rss_kb"], stats[-1]["peak_rss_kb"]


def _with_sessions(deployment: Deployment, precision: str, variants: Sequence[str] | None,
                   work: Callable[[RunnerSession], None], retries: int, delay_s: float, timeout_s: float,
                   partial: Any) -> None:
    """Run ``work`` in a runner session; if the device drops, wait, re-deploy and call ``work`` again
    (it resumes from its own progress)."""
    device = deployment.device
    for attempt in range(retries + 1):
        try:
            with deployment.session(precision, variants, timeout_s=timeout_s) as session:
                work(session)
            return
        except DeviceError as err:
            if attempt == retries:
                raise DeviceLost(f"{err}\n(gave up on {device.id} after {retries + 1} attempts; results measured "
                                 "before are in the returned partial result and the manifest)", partial) from err
            log.warning("%s; retrying (%d of %d)", err, attempt + 1, retries)
            try:
                wait_for(device, attempts=10, delay_s=delay_s)
                deployment.verify(retries=1, retry_delay_s=delay_s)
            except DeviceError:
                continue  # still gone: the next attempt fails and counts


def _record_variant(portfolio: Portfolio, device_id: str, facts: dict[str, Any], measured: VariantBench) -> None:
    with _MANIFEST_LOCK:
        fresh = Portfolio.open(portfolio.root, verify=False)  # other threads may have written since
        entry = dict(fresh[measured.name].devices.get(device_id, {}))
        entry["facts"] = facts
        entry[measured.precision] = measured.to_json()
        fresh.update_variant(measured.name, devices={device_id: entry})
        portfolio[measured.name].devices[device_id] = entry


def _record_summary(portfolio: Portfolio, device_id: str, facts: dict[str, Any], precision: str,
                    summary: dict[str, Any]) -> None:
    with _MANIFEST_LOCK:
        fresh = Portfolio.open(portfolio.root, verify=False)
        devices = fresh.extra.setdefault("devices", {})
        devices.setdefault(device_id, {})["facts"] = facts
        devices[device_id][precision] = summary
        fresh.save()
        portfolio.extra["devices"] = devices


# ---------------------------------------------------------------------------------------- switching
@dataclass(frozen=True)
class DeviceSwitch:
    """One switch on a device: when (s since the session started), from and to which program, why,
    the runner-measured swap time, and the conditions that led to it."""

    time_s: float
    previous: tuple[str, str] | None
    name: str
    precision: str
    reason: str
    switch_us: float
    conditions: dict[str, float]


@dataclass
class SwitchReport:
    """What :func:`switch_session` saw: every switch and the inference latencies per program."""

    device_id: str
    switches: list[DeviceSwitch] = field(default_factory=list)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # "name/precision" -> latencies
    inferences: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "duration_s": self.duration_s, "inferences": self.inferences,
                "switches": [asdict(s) for s in self.switches],
                "latency_p50_ms": {k: statistics.median(v) for k, v in self.latency_ms.items() if v}}

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.device_id}: {len(self.switches)} switches, {self.inferences} inferences "
                            f"in {self.duration_s:.1f} s")
        for column in ("t s", "from", "to", "switch us", "reason"):
            table.add_column(column)
        for s in self.switches:
            previous = "/".join(s.previous) if s.previous else "-"
            table.add_row(f"{s.time_s:.2f}", previous, f"{s.name}/{s.precision}", f"{s.switch_us:.3f}", s.reason)
        return table


def device_options(portfolio: Portfolio, device_id: str, precisions: Sequence[str]) -> list[Option]:
    """Policy options from the manifest. Latency: measured on this device (:func:`bench`), else on
    the host, else None. Memory: the runner's resident memory holding only that variant on this device, else
    the program's file size. Accuracy: :meth:`~lightning_shifter.portfolio.Variant.program_accuracy`, as on the host.

    Example::

        >>> import tempfile
        >>> from lightning_shifter.device import device_options
        >>> from lightning_shifter.portfolio import Portfolio, Variant
        >>> from lightning_shifter.policy import LatencyBudget
        >>> p = Portfolio.create(tempfile.mkdtemp(), input_shape=(1, 4))
        >>> for r, (acc, host_ms) in enumerate([(0.98, 4.0), (0.95, 1.0)]):
        ...     name = f"round-{r:02d}"
        ...     p.put_variant(Variant(name, round=r, density=0.5 ** r, params=100, macs=100,
        ...                           files={"fp32": p.write_file(name, "fp32", bytes(1024 * 1024))},
        ...                           metrics={"val_acc_compacted": acc}, host={"fp32": {"p50_ms": host_ms}}))
        >>> _ = p.update_variant("round-01", devices={"phone-1": {"fp32": {"p50_ms": 3.0, "alone_rss_kb": 2048}}})
        >>> options = device_options(p, "phone-1", ["fp32"])
        >>> [(o.name, o.accuracy, o.latency_ms, o.memory_mb) for o in options]  # measured on phone-1, else host
        [('round-00', 0.98, 4.0, 1.0), ('round-01', 0.95, 3.0, 2.0)]
        >>> LatencyBudget().choose(options, {"latency_budget_ms": 3.5}).name
        'round-01'
    """
    options = []
    for variant in portfolio.variants:
        for precision in precisions:
            if precision not in variant.files:
                continue
            on_device = variant.devices.get(device_id, {}).get(precision, {})
            latency = on_device.get("p50_ms", variant.host.get(precision, {}).get("p50_ms"))
            memory_kb = on_device.get("alone_rss_kb")
            memory_mb = memory_kb / 1024 if memory_kb is not None else variant.files[precision].bytes / 2**20
            options.append(Option(variant.name, precision, variant.program_accuracy(precision), latency, memory_mb))
    return options


def switch_session(device: Device, portfolio: Portfolio | str | os.PathLike, policy: Policy,
                   signals: Iterable[Signal] = (), duration_s: float = 10.0, precisions: Sequence[str] = ("fp32",),
                   infer_n: int = 1, deployment: Deployment | None = None,
                   on_switch: Callable[[DeviceSwitch], None] | None = None, retries: int = 2,
                   retry_delay_s: float = 1.0, timeout_s: float = 60.0,
                   variants: Sequence[str] | None = None) -> SwitchReport:
    """Run inference on ``device`` for ``duration_s`` while ``policy`` picks the program.

    ``variants`` limits the choice to those names (default: every variant with a program).

    Before each inference the conditions are read from ``signals`` (objects with ``read() -> dict``,
    e.g. :class:`~lightning_shifter.signals.ScheduleSignal` for a latency budget over time or
    :class:`~lightning_shifter.device.DeviceSignal` for the device's temperature and battery) and
    ``policy.choose(options, conditions)`` decides; a different decision switches the runner, and
    the switch is reported (``on_switch``, the log, and the returned report). Programs without a
    device or host latency in the manifest are timed on the device first.

    Example (the session needs a runner built with ``mobile/build.sh``)::

        >>> import tempfile
        >>> import rich
        >>> from lightning_shifter.device import DeviceSignal, LocalDevice, switch_session
        >>> from lightning_shifter.policy import LatencyBudget
        >>> from lightning_shifter.signals import ScheduleSignal
        >>> device = LocalDevice(tempfile.mkdtemp())
        >>> budget = ScheduleSignal("latency_budget_ms", [(0, 5.0), (2, 0.05)])  # tightens after 2 s
        >>> report = switch_session(device, "portfolio/", LatencyBudget(), duration_s=4,
        ...                         signals=[budget, DeviceSignal(device)])  # doctest: +SKIP
        >>> [(s.name, round(s.time_s)) for s in report.switches]  # doctest: +SKIP
        [('round-00', 0), ('round-04', 2)]
        >>> rich.print(report.table())  # doctest: +SKIP
    """
    check_request_value("infer_n", infer_n)
    portfolio = _open(portfolio)
    precisions = tuple(precisions)
    signals = list(signals)
    deployment = deployment or deploy(device, portfolio, precisions, retries=retries, retry_delay_s=retry_delay_s)
    options = device_options(portfolio, device.id, precisions)
    if variants is not None:
        unknown = sorted(set(variants) - {o.name for o in options})
        if unknown:
            raise DeviceError(f"no program of {list(precisions)} for variant(s) {unknown} in {portfolio.root}: "
                              f"choose among {sorted({o.name for o in options})}")
        options = [o for o in options if o.name in set(variants)]
    report = SwitchReport(device.id)
    clock: list[float] = []  # the session's start, set once the runners are up

    for attempt in range(retries + 1):
        sessions: dict[str, RunnerSession] = {}
        try:
            for precision in precisions:
                sessions[precision] = deployment.session(precision, timeout_s=timeout_s)
            options = [o if o.latency_ms is not None else _timed(o, sessions[o.precision]) for o in options]
            if not clock:
                clock.append(time.monotonic())
                for signal in signals:
                    if hasattr(signal, "start"):
                        signal.start()  # schedules count from the start of the session
            _switch_loop(sessions, policy, signals, options, report, clock[0], duration_s, infer_n, on_switch)
            report.duration_s = time.monotonic() - clock[0]
            return report
        except DeviceError as err:
            report.duration_s = time.monotonic() - clock[0] if clock else 0.0
            if attempt == retries:
                raise DeviceLost(f"{err}\n(switch session on {device.id} stopped after {retries + 1} attempts; "
                                 "the switches so far are in the partial report)", report) from err
            log.warning("%s; reconnecting (%d of %d)", err, attempt + 1, retries)
            try:
                wait_for(device, attempts=10, delay_s=retry_delay_s)
            except DeviceError:
                pass
        finally:
            for session in sessions.values():
                session.close()
    raise AssertionError("unreachable")


def _timed(option: Option, session: RunnerSession) -> Option:
    return replace(option, latency_ms=session.bench(option.name, warmup=3, runs=20)["p50_ms"])


def _switch_loop(sessions: Mapping[str, RunnerSession], policy: Policy, signals: Sequence[Signal], options: list[Option],
                 report: SwitchReport, start: float, duration_s: float, infer_n: int,
                 on_switch: Callable[[DeviceSwitch], None] | None) -> None:
    active: tuple[str, str] | None = None  # a new connection starts with no program chosen
    while time.monotonic() - start < duration_s:
        conditions: dict[str, float] = {}
        for signal in signals:
            conditions.update(signal.read())
        decision = policy.choose(options, conditions)
        target = (decision.name, decision.precision)
        if target != active:
            answer = sessions[decision.precision].switch(decision.name)
            previous = report.switches[-1] if report.switches else None
            event = DeviceSwitch(time.monotonic() - start, (previous.name, previous.precision) if previous else None,
                                 decision.name, decision.precision, decision.reason, answer["switch_us"],
                                 dict(conditions))
            report.switches.append(event)
            log.info("%s switched to %s/%s in %.3f us: %s", report.device_id, decision.name, decision.precision,
                     event.switch_us, decision.reason)
            if on_switch is not None:
                on_switch(event)
            active = target
        answer = sessions[decision.precision].infer(n=infer_n, max_output=0)
        report.latency_ms.setdefault(f"{decision.name}/{decision.precision}", []).extend(answer["latency_ms"])
        report.inferences += infer_n


# ---------------------------------------------------------------------------------------- many devices
def on_devices(devices: Sequence[Device], work: Callable[..., Any], *args: Any,
               **kwargs: Any) -> dict[str, Any]:
    """Call ``work(device, *args, **kwargs)`` for every device at once, one thread per device.

    Returns ``{device.id: result}``, where a device that failed maps to its exception (the others
    still finish).

    Example::

        >>> import tempfile
        >>> from lightning_shifter.device import AdbDevice, LocalDevice, bench, on_devices
        >>> devices = [LocalDevice(tempfile.mkdtemp(), device_id=f"local-{i}") for i in range(2)]
        >>> on_devices(devices, lambda device, word: device.run(["echo", word, device.id]).stdout.strip(), "hi")
        {'local-0': 'hi local-0', 'local-1': 'hi local-1'}
        >>> on_devices(devices, lambda device: 1 / int(device.id[-1]))  # a failure is returned, not raised
        {'local-0': ZeroDivisionError('division by zero'), 'local-1': 1.0}
        >>> results = on_devices(AdbDevice.all(), bench, "portfolio/")  # doctest: +SKIP
    """
    if not devices:
        return {}
    ids = [d.id for d in devices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"devices must be distinct, got ids {ids}")
    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="device") as pool:
        futures = {device.id: pool.submit(work, device, *args, **kwargs) for device in devices}
    results: dict[str, Any] = {}
    for device_id, future in futures.items():
        error = future.exception()
        results[device_id] = error if error is not None else future.result()
    return results
