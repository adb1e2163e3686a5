"""``lightning-shifter device``: phones over adb (list, deploy, bench, switch). Deployment side: no Lightning,
no training code."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_shifter.cli.common import CommandError, positive_float, rich_console
from lightning_shifter.portfolio import PRECISIONS


def _runner_count(name: str) -> Callable[[str], int]:
    """An argparse type for a count the native runner bounds (``REQUEST_LIMITS``), refused before deploying."""

    def parse(text: str) -> int:
        from lightning_shifter.device.runner import REQUEST_LIMITS

        low, high = REQUEST_LIMITS[name]
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high} (the runner's limit), got {text}")
        return value

    return parse


def _adb_device(args: argparse.Namespace) -> Any:
    from lightning_shifter.device import AdbDevice

    return AdbDevice(args.serial, host=args.adb_host, port=args.adb_port, workdir=args.workdir)


def _budget_points(text: str) -> list[tuple[float, float]]:
    points = []
    for part in text.split(","):
        try:
            seconds, value = (float(x) for x in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected SECONDS:MS pairs separated by commas, such as 0:5,3:0.5,6:5; got {text!r}") from None
        points.append((seconds, value))
    if [t for t, _ in points] != sorted(t for t, _ in points) or points[0][0] < 0:
        raise argparse.ArgumentTypeError(f"budget times must start at >= 0 and increase, got {text!r}")
    return points


def run_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from lightning_shifter.device import adb_client, list_devices

    client = adb_client(args.adb_host, args.adb_port)
    devices = list_devices(client)
    table = Table(title=f"adb devices at {client.host}:{client.port}")
    table.add_column("serial")
    table.add_column("state")
    for serial, state in devices:
        table.add_row(serial, state)
    rich_console().print(table if devices else "no devices attached: connect a phone with USB debugging enabled")
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    from lightning_shifter.device import deploy

    device = _adb_device(args)
    with rich_console().status(f"deploying {args.portfolio} to {device.id}"):
        deployment = deploy(device, args.portfolio, args.precisions, build_root=args.build_root)
    rich_console().print(f"{device.id}: {len(deployment.pushed)} files pushed ({deployment.bytes_pushed / 1e6:.1f} MB), "
                     f"{len(deployment.skipped)} already there and verified; portfolio at {deployment.portfolio_dir}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from lightning_shifter.device import AdbDevice, DeviceLost, bench, deploy, on_devices

    console = rich_console()
    devices = (AdbDevice.all(args.adb_host, args.adb_port, workdir=args.workdir) if args.all
               else [_adb_device(args)])
    if not devices:
        raise CommandError("no device in state 'device' is attached: check `lightning-shifter device list`")

    def work(device: Any) -> Any:
        deployment = deploy(device, args.portfolio, args.precisions, build_root=args.build_root)
        return bench(device, args.portfolio, args.precisions, warmup=args.warmup, runs=args.runs,
                     reloads=args.reloads, deployment=deployment)

    with console.status(f"benchmarking {args.portfolio} on {', '.join(d.id for d in devices)}"):
        results = on_devices(devices, work)
    failures = {device_id: r for device_id, r in results.items() if isinstance(r, Exception)}
    for device_id, result in results.items():
        if not isinstance(result, Exception):
            console.print(result.table())
        elif isinstance(result, DeviceLost) and result.partial.variants:
            console.print(result.partial.table())  # what was measured before the device went away
            console.print(f"{device_id}: measured above before the device was lost (also in the manifest)")
    if failures:
        raise CommandError("; ".join(f"{device_id}: {err}" for device_id, err in failures.items()))
    return 0


def run_switch(args: argparse.Namespace) -> int:
    from lightning_shifter.device import DeviceLost, switch_session
    from lightning_shifter.policy import LatencyBudget
    from lightning_shifter.sessions import device_session_events
    from lightning_shifter.signals import ScheduleSignal

    device = _adb_device(args)
    lost = None
    with rich_console().status(f"switching session on {device.id} for {args.duration:g} s"):
        try:
            report = switch_session(device, args.portfolio, LatencyBudget(),
                                    [ScheduleSignal("latency_budget_ms", args.budget)], duration_s=args.duration,
                                    precisions=args.precisions)
        except DeviceLost as err:  # show and keep what ran before the device went away
            lost, report = err, err.partial
    rich_console().print(report.table())
    if args.session_out:
        events = device_session_events(report)
        args.session_out.write_text(json.dumps({"title": device.id, "events": events, "summary": report.to_json()},
                                               indent=1))
        rich_console().print(f"session log: {args.session_out} (lightning-shifter report ... --session {args.session_out})")
    if lost is not None:
        raise lost
    return 0


def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "device", help="phones over adb: list, deploy, bench, switch",
        description="Run a portfolio on Android devices through adb and the native runner (mobile/). Files are "
                    "verified by sha256 on the device; results are recorded in the manifest per device.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def connection(p: argparse.ArgumentParser) -> None:
        p.add_argument("--adb-host", default="127.0.0.1", help="adb server host (default: 127.0.0.1)")
        p.add_argument("--adb-port", type=int, default=None,
                       help="adb server port (default: $ANDROID_ADB_SERVER_PORT, else 5037)")

    def target(p: argparse.ArgumentParser, *, precisions: Sequence[str] = ("fp32",)) -> None:
        p.add_argument("portfolio", type=Path, help="an exported portfolio folder")
        p.add_argument("--serial", help="which device (default: the only one attached)")
        connection(p)
        p.add_argument("--workdir", default="/data/local/tmp/lightning-shifter", help="device work folder")
        p.add_argument("--build-root", type=Path, default=None,
                       help="use the runner builds in this folder as they are (default: the runner this package "
                            "builds, see `lightning-shifter runner build`)")
        p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(precisions),
                       help=f"programs to use (default: {' '.join(precisions)})")

    listing = actions.add_parser("list", help="devices the adb server knows, with their state",
                                 description="List the devices the adb server knows, with their state.")
    connection(listing)
    listing.set_defaults(handler=run_list)

    deploying = actions.add_parser("deploy", help="push the runner and the programs, verified by sha256",
                                   description="Push the runner built for the device's ABI, its libraries and the "
                                               "portfolio's programs; files already there with the same sha256 are kept.")
    target(deploying)
    deploying.set_defaults(handler=run_deploy)

    benching = actions.add_parser("bench", help="latency, switching and memory of every variant on the device(s)",
                                  description="Deploy and measure every variant: load, first inference, latency "
                                              "percentiles, switch vs reload, memory; recorded in the manifest.")
    target(benching)
    benching.add_argument("--all", action="store_true", help="every attached device at once")
    benching.add_argument("--warmup", type=_runner_count("warmup"), default=5,
                          help="inferences before timing, 0 to 100000 (default: 5)")
    benching.add_argument("--runs", type=_runner_count("runs"), default=50,
                          help="timed inferences, 1 to 100000 (default: 50)")
    benching.add_argument("--reloads", type=_runner_count("reloads"), default=5,
                          help="loads from storage timed, 1 to 1000 (default: 5)")
    benching.set_defaults(handler=run_bench)

    switching = actions.add_parser("switch", help="run inference while a latency budget changes; log every switch",
                                   description="Run inference on the device for --duration seconds while the "
                                               "LatencyBudget policy picks the variant under a budget schedule.")
    target(switching)
    switching.add_argument("--duration", type=positive_float, default=10.0, help="seconds (default: 10)")
    switching.add_argument("--budget", type=_budget_points, default=[(0.0, 5.0), (3.0, 0.5), (6.0, 5.0)],
                           metavar="S:MS,...", help="latency budget over time (default: 0:5,3:0.5,6:5)")
    switching.add_argument("--session-out", type=Path, default=None,
                           help="write the session log (JSON) for `lightning-shifter report --session`")
    switching.set_defaults(handler=run_switch)
