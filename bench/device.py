"""Switching and memory on devices (DESIGN.md section 5), through the device harness.

    python bench/device.py [--portfolio DIR] [--precisions fp32,int8] [--runs 50] [--start-adb]

Runs :func:`lightning_shifter.device.bench` on every phone attached to a running adb server (one
thread per device), or on this machine (:class:`~lightning_shifter.device.LocalDevice`) when none
is. Per device, side by side in one run:

* switching: a switch between preloaded variants vs loading the variant from storage
  (target: >= 50x cheaper, and < 1 ms on the host);
* memory: resident memory of the runner holding the whole portfolio vs holding only the dense
  variant (target: <= 1.5), and the same for peak resident memory (which includes load transients).

Without ``--portfolio`` it exports a stand-in portfolio once (build/bench-device-portfolio): VGG-11
for 3x32x32 inputs with every layer's channels at 1, 0.75, 0.5, 0.35 and 0.25 of the dense width
(parameters about 1, 0.56, 0.25, 0.12 and 0.06 of the dense 9.2 M), random weights (accuracy is not
measured here). Pass an exported IMP portfolio to measure a real one.
Prints rich tables and writes bench/results/device.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_shifter.device import AdbDevice, DeviceError, LocalDevice, bench, on_devices
from lightning_shifter.device.transport import adb_client, list_devices
from lightning_shifter.portfolio import Portfolio, Variant

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "device.json"
STAND_IN = REPO / "build" / "bench-device-portfolio"
WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25)
SWITCH_TARGET = 50.0  # preloaded switch at least this many times cheaper than a load from storage
MEMORY_TARGET = 1.5  # whole portfolio / dense model, peak resident memory


def vgg_style(width: float, classes: int = 10) -> nn.Module:
    """VGG-11 for 32x32 inputs with every layer's channels scaled by ``width``."""
    layers: list[nn.Module] = []
    previous = 3
    for entry in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512):
        if entry == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        count = max(4, round(entry * width))
        layers += [nn.Conv2d(previous, count, 3, padding=1), nn.BatchNorm2d(count), nn.ReLU()]
        previous = count
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, classes)]
    return nn.Sequential(*layers).eval()


def stand_in_portfolio(root: Path, console: Console) -> Path:
    """Export the stand-in portfolio once; later runs reuse it."""
    if (root / "manifest.json").is_file():
        return root
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    console.print(f"exporting the stand-in portfolio to {root} (once)")
    example = torch.randn(1, 3, 32, 32)
    portfolio = Portfolio.create(root, input_shape=example.shape)
    for round_index, width in enumerate(WIDTHS):
        torch.manual_seed(round_index)
        model = vgg_style(width)
        program = torch.export.export(model, (example,))
        buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
        name = f"width-{round(width * 100):03d}"
        params = sum(p.numel() for p in model.parameters())
        portfolio.put_variant(Variant(name=name, round=round_index, density=width**2, params=params,
                                      macs=0, files={"fp32": portfolio.write_file(name, "fp32", buffer)}))
    return root


def attached_devices(start_adb: bool, console: Console) -> list:
    """Phones attached to the adb server (started only with --start-adb), else this machine."""
    try:
        client = adb_client(start_server=start_adb)
        serials = [serial for serial, state in list_devices(client) if state == "device"]
        skipped = [f"{serial} ({state})" for serial, state in list_devices(client) if state != "device"]
        if skipped:
            console.print(f"[yellow]skipping devices not ready: {', '.join(skipped)}[/yellow]")
        devices = [AdbDevice(serial, start_server=False) for serial in serials]
    except DeviceError as err:
        console.print(f"no adb devices ({str(err).splitlines()[0]})")
        devices = []
    return devices or [LocalDevice(REPO / "build" / "bench-device-local")]


def summary_table(results: dict, precisions: list[str]) -> Table:
    table = Table(title="switching and memory per device (DESIGN.md section 5)")
    for column in ("device", "prec", "switch us (median)", "load from storage ms (median)",
                   f"switch vs load (>= {SWITCH_TARGET:g}x)", f"portfolio / dense resident (<= {MEMORY_TARGET:g})",
                   "portfolio / dense peak"):
        table.add_column(column, justify="left" if column in ("device", "prec") else "right")
    for device_id, result in results.items():
        if isinstance(result, BaseException):
            table.add_row(device_id, "", f"[red]failed: {str(result).splitlines()[0]}[/red]", "", "", "", "")
            continue
        for precision in precisions:
            rows = [v for v in result.variants if v.precision == precision]
            switch_us = statistics.median(v.switch_us for v in rows)
            load_ms = statistics.median(v.reload_ms for v in rows)
            ratio = load_ms * 1e3 / switch_us
            memory = result.memory[precision]
            table.add_row(device_id, precision, f"{switch_us:.4f}", f"{load_ms:.3f}",
                          _verdict(f"{ratio:,.0f}x", ratio >= SWITCH_TARGET),
                          _verdict(f"{memory['ratio']:.2f}", memory["ratio"] <= MEMORY_TARGET),
                          f"{memory['peak_ratio']:.2f}")
    return table


def _verdict(text: str, ok: bool) -> str:
    return f"[green]{text}[/green]" if ok else f"[red]{text}[/red]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portfolio", type=Path, help="an exported portfolio (default: the stand-in)")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32,int8")
    parser.add_argument("--runs", type=int, default=50, help="timed inferences per variant")
    parser.add_argument("--reloads", type=int, default=5, help="loads from storage per variant")
    parser.add_argument("--start-adb", action="store_true", help="start the local adb server if it is not running")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    precisions = [p for p in args.precisions.split(",") if p]
    portfolio = args.portfolio or stand_in_portfolio(STAND_IN, console)
    devices = attached_devices(args.start_adb, console)
    console.print(f"benchmarking {portfolio} on {', '.join(d.id for d in devices)}")

    started = time.perf_counter()
    results = on_devices(devices, bench, portfolio, precisions=precisions, runs=args.runs, reloads=args.reloads)
    for result in results.values():
        if not isinstance(result, BaseException):
            console.print(result.table())
    console.print(summary_table(results, precisions))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "portfolio": str(portfolio),
        "stand_in": args.portfolio is None,
        "seconds": time.perf_counter() - started,
        "targets": {"switch_vs_load": SWITCH_TARGET, "portfolio_vs_dense_memory": MEMORY_TARGET},
        "devices": {device_id: ({"error": str(r)} if isinstance(r, BaseException) else r.to_json())
                    for device_id, r in results.items()},
    }, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")
    return 1 if any(isinstance(r, BaseException) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
