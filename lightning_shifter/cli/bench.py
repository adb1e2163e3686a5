"""``lightning-shifter bench``: every program of a portfolio timed on this host (ExecuTorch, and the native
runner through the device harness with ``--runner``). Deployment side: no Lightning, no training code."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_shifter.cli.common import CommandError, line_printer, positive_int, progress_bar, rich_console
from lightning_shifter.portfolio import PRECISIONS, Portfolio


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from lightning_shifter.batches import example_input
    from lightning_shifter.runtime import measure_program

    portfolio = Portfolio.open(args.portfolio, verify=True)
    programs = [(v.name, p) for v in portfolio.variants for p in args.precisions if p in v.files]
    if not programs:
        raise CommandError(f"{args.portfolio} has no {'/'.join(args.precisions)} programs: run "
                           f"`lightning-shifter export {args.portfolio}` first")
    example = [example_input(portfolio.input_shape, portfolio.input_dtype)]
    console = rich_console()
    table = Table(title=f"Host ExecuTorch benchmark of {args.portfolio} ({args.runs} runs after {args.warmup} warm-up)")
    for column in ("variant", "precision", "load ms", "p50 ms", "p90 ms"):
        table.add_column(column, justify="left" if column in ("variant", "precision") else "right")
    with progress_bar(not args.no_progress) as bar:
        task = bar.add_task("timing programs (ExecuTorch, this host)", total=len(programs))
        for name, precision in programs:
            timing = measure_program(portfolio.file_path(name, precision), example, args.warmup, args.runs)
            portfolio.update_variant(name, host={precision: {**portfolio[name].host.get(precision, {}),
                                                             **timing.to_json()}})
            table.add_row(name, precision, f"{timing.load_ms:.2f}", f"{timing.p50_ms:.4f}", f"{timing.p90_ms:.4f}")
            bar.advance(task)
    console.print(table)
    if args.runner:
        from lightning_shifter.device import LocalDevice, bench, deploy, find_runner_build

        device = LocalDevice(args.workdir or args.portfolio.parent / ".shifter-host-runner", device_id=args.device_id)
        with console.status("preparing the native runner"):
            build = find_runner_build(device.abi, progress=line_printer(console))
        with console.status(f"benchmarking every program on the native runner ({device.id})"):
            precisions = [p for p in args.precisions if any(q == p for _, q in programs)]
            deployment = deploy(device, args.portfolio, precisions, runner=build)
            result = bench(device, args.portfolio, precisions, warmup=args.warmup, runs=args.runs, reloads=3,
                           deployment=deployment)
        console.print(result.table())
    return 0


def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="time every program of a portfolio on this host (ExecuTorch, optionally the native runner)",
        description="Load each exported program with the ExecuTorch runtime and time it; the figures are written "
                    "to the manifest (host). With --runner, also run the native runner on this machine through "
                    "the device harness (the code path phones use) and record it as a device.",
    )
    parser.add_argument("portfolio", type=Path, help="an exported portfolio folder")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="which programs (default: fp32 int8, those that exist)")
    parser.add_argument("--warmup", type=int, default=5, help="inferences before timing (default: 5)")
    parser.add_argument("--runs", type=positive_int, default=50, help="timed inferences per program (default: 50)")
    parser.add_argument("--runner", action="store_true",
                        help="also benchmark on the native runner (mobile/; built on first use)")
    parser.add_argument("--device-id", default="host-native", help="device id the runner results are recorded under")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the runner and programs are deployed (default: <portfolio>/../.shifter-host-runner)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run)
