"""``lightning-shifter demo`` from end to end: train, export, benchmark, switch, report, summarise.

:func:`run_pipeline` takes the command's arguments (``lightning-shifter demo --help`` lists them): it
trains with :func:`~lightning_shifter.demo.training.run_demo`, exports every variant (fp32, int8),
benchmarks them with the ExecuTorch runtime and the native runner, runs a switching session on each
under a latency budget that drops and rises (:mod:`lightning_shifter.sessions`), writes the HTML report
and ``demo_summary.json``, and prints the headline, portfolio and switching tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from lightning_shifter.cli.common import CommandError, lightning_errors, line_printer, progress_bar, rich_console
from lightning_shifter.cli.export import export_with_progress, failed_programs
from lightning_shifter.demo.data import DigitsDataModule
from lightning_shifter.demo.training import headline_summary, original_rule_notes, run_demo
from lightning_shifter.device import DeviceError, LocalDevice, bench, deploy, device_options, find_runner_build, switch_session
from lightning_shifter.policy import LatencyBudget
from lightning_shifter.portfolio import PRECISIONS, Portfolio
from lightning_shifter.report import write_report
from lightning_shifter.runtime import Switcher, load_method
from lightning_shifter.sessions import (
    budget_schedule,
    device_session_events,
    host_switch_session,
    switching_summary,
)
from lightning_shifter.signals import ScheduleSignal


def _fresh_run_dir(prefix: str) -> Path:
    base = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def _empty_output_dir(path: Path | None, prefix: str) -> Path:
    path = path or _fresh_run_dir(prefix)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CommandError(f"output folder {path} already exists and is not empty: pass an empty or new --out folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_pipeline(args: argparse.Namespace) -> int:
    """Run the demo with the ``lightning-shifter demo`` arguments; returns the exit code (0)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = rich_console()
    out = _empty_output_dir(args.out, "demo")
    console.print(f"lightning-shifter demo: writing to {out}")
    started = time.perf_counter()

    device, runner, runner_problem = None, None, None
    if args.runner != "skip":  # first, so that a run that needs the runner fails before training
        device = LocalDevice(out / "native-runner", device_id="host-native")
        with console.status("preparing the native runner"):
            try:
                runner = find_runner_build(device.abi, progress=line_printer(console))
            except DeviceError as err:
                if args.runner == "require":
                    raise CommandError(str(err)) from None
                runner_problem = str(err)
                console.print(f"[yellow]native runner skipped:[/yellow] {err}")

    with lightning_errors():
        records, original = run_demo(
            out, model=args.model, width=args.width, image_size=args.image_size, rounds=args.rounds,
            final_density=args.final_density, epochs_per_round=args.epochs_per_round, rewind_step=args.rewind_step,
            alpha=args.alpha, keep=args.keep, seed=args.seed, progress_bar=not args.no_progress)
    training_s = time.perf_counter() - started
    portfolio_dir = out / "portfolio"
    datamodule = DigitsDataModule(seed=args.seed, image_size=args.image_size)
    datamodule.setup("fit")
    report = export_with_progress(portfolio_dir, args.precisions, datamodule, None, 1, False, not args.no_progress)
    if report.failed:
        raise CommandError(failed_programs(report))

    runner_bench = None
    if runner is not None:
        with console.status(f"benchmarking every program on the native runner ({device.id})"):
            deployment = deploy(device, portfolio_dir, args.precisions, runner=runner)
            runner_bench = bench(device, portfolio_dir, args.precisions, warmup=5, runs=args.runner_runs,
                                 reloads=3, deployment=deployment)

    sessions, switching = _demo_sessions(portfolio_dir, args, device if runner is not None else None, console)
    sessions_dir = out / "sessions"
    sessions_dir.mkdir()
    for title, events in sessions.items():
        (sessions_dir / f"{_slug(title)}.json").write_text(json.dumps({"title": title, "events": events}, indent=1))

    with console.status("writing the report"):
        page = write_report(portfolio_dir, out / "report", sessions=sessions,
                            notes=original_rule_notes(portfolio_dir, original))
    headline = headline_summary(portfolio_dir, original)
    summary = {"seconds": time.perf_counter() - started, "training_seconds": training_s, "rounds": len(records),
               "headline": headline, "switching": switching,
               "native_runner": (runner_problem or "ok") if args.runner != "skip" else "skipped",
               "report": str(page)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))

    console.print(_headline_table(headline))
    console.print(_portfolio_table(portfolio_dir, device.id if runner_bench is not None else None))
    console.print(_switching_table(switching))
    if runner_problem:
        console.print(f"[yellow]native runner not measured:[/yellow] {runner_problem}")
    console.print(f"{len(records)} rounds in {summary['seconds']:.0f} s; portfolio: {portfolio_dir}")
    console.print(f"report: {page}")
    return 0


def _demo_sessions(portfolio_dir: Path, args: argparse.Namespace, device: Any, console: Any
                   ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """A host Switcher session (and one on the native runner) under a latency budget that drops and rises."""
    portfolio = Portfolio.open(portfolio_dir, verify=False)
    # switch along the Pareto front: variants that differ in size, not only in training noise
    front = [v.name for v in portfolio.pareto_front()]
    # among the fp32 programs when there are any: the demo's int8 programs all run in 0.03-0.07 ms on
    # this host, differences as small as its timing noise, and the most accurate of them is also the
    # fastest, so a budget would have nothing to choose between
    precisions = ["fp32"] if "fp32" in args.precisions else list(args.precisions)
    switcher = Switcher(portfolio_dir, precisions, variants=front, policy=LatencyBudget(), measure=None)
    # the session infers back to back, and the budgets come from the latency that nine back-to-back runs
    # in ten meet. Paced (an inference every 1-10 ms), this host's wake-up cost of ~0.3 ms swamps these
    # sub-millisecond programs and every variant times alike
    options = switcher.remeasure(runs=100, interval_s=0.0, percentile=90)
    schedule = budget_schedule(options, args.session_seconds)
    switcher.signals.append(ScheduleSignal("latency_budget_ms", schedule))
    load_ms = [load_method(portfolio.file_path(o.name, o.precision))[1] for o in switcher.options()]

    sessions, summaries = {}, {}
    with progress_bar(not args.no_progress) as progress:
        task = progress.add_task("switching session, host ExecuTorch", total=round(args.session_seconds, 1))
        events = host_switch_session(switcher, args.session_seconds, interval_s=0.0,
                                     on_step=lambda t: progress.update(task, completed=round(t, 1)))
        progress.update(task, completed=round(args.session_seconds, 1))
    sessions["host ExecuTorch Switcher"] = events
    summaries["host ExecuTorch Switcher"] = switching_summary(events, load_ms, inferences=len(events))
    summaries["host ExecuTorch Switcher"]["options"] = [dataclasses.asdict(o) for o in options]

    if device is not None:
        # the runner's latencies differ from the host runtime's: scale its budget to what it measured
        on_device = [o for o in device_options(Portfolio.open(portfolio_dir, verify=False), device.id, precisions)
                     if o.name in front and o.latency_ms is not None]
        device_schedule = budget_schedule(on_device, args.session_seconds) if on_device else schedule
        with console.status(f"switching session on the native runner ({device.id})"):
            report = switch_session(device, portfolio_dir, LatencyBudget(),
                                    [ScheduleSignal("latency_budget_ms", device_schedule)],
                                    duration_s=args.session_seconds, precisions=precisions, variants=front)
        events = device_session_events(report)
        reload_ms = [v[p]["reload_ms"] for v in (variant.devices.get(device.id, {})
                                                  for variant in Portfolio.open(portfolio_dir, verify=False).variants)
                     for p in precisions if p in v]
        sessions[f"native runner ({device.id})"] = events
        summaries[f"native runner ({device.id})"] = switching_summary(events, reload_ms, report.inferences)
    return sessions, summaries


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _portfolio_table(portfolio_dir: Path, runner_id: str | None) -> Any:
    portfolio = Portfolio.open(portfolio_dir, verify=False)
    dense = max(portfolio.variants, key=lambda v: v.params)
    table = Table(title=f"Portfolio {portfolio_dir}: {len(portfolio)} variants")
    columns = ["variant", "density", "params", "smaller", "MACs", "acc sparse", "acc compact", "acc int8",
               "exact err", "host fp32 ms", "host int8 ms"]
    if runner_id is not None:
        columns += ["runner fp32 ms", "runner int8 ms"]
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")

    def pct(key: str, v: Any) -> str:
        value = v.metrics.get(key)
        return "" if value is None else f"{100 * value:.1f}%"

    def ms(value: Any) -> str:
        return "" if value is None else f"{value:.3f}"

    for v in portfolio.variants:
        row = [v.name, f"{v.density:.4f}", f"{v.params:,}", f"{dense.params / max(v.params, 1):.2f}x", f"{v.macs:,}",
               pct("val_acc_sparse", v), pct("val_acc_compacted", v), pct("val_acc_int8", v),
               "" if v.exactness_error is None else f"{v.exactness_error:.1e}",
               ms(v.host.get("fp32", {}).get("p50_ms")), ms(v.host.get("int8", {}).get("p50_ms"))]
        if runner_id is not None:
            on_runner = v.devices.get(runner_id, {})
            row += [ms(on_runner.get(p, {}).get("p50_ms")) for p in PRECISIONS]
        table.add_row(*row)
    return table


def _switching_table(summaries: dict[str, dict[str, Any]]) -> Any:
    table = Table(title="Switching under a latency budget that drops and rises")
    for column in ("session", "inferences", "within budget", "switches", "switch us (median)", "switch us (max)",
                   "load from storage ms", "switch vs load"):
        table.add_column(column, justify="left" if column == "session" else "right")
    for title, s in summaries.items():
        table.add_row(title, str(s["inferences"]),
                      f"{100 * s['within_budget']:.0f}%" if "within_budget" in s else "", str(s["switches"]),
                      f"{s['switch_us_median']:.2f}" if "switch_us_median" in s else "",
                      f"{s['switch_us_max']:.2f}" if "switch_us_max" in s else "",
                      f"{s['load_ms_median']:.2f}" if "load_ms_median" in s else "",
                      f"{s['speedup_vs_load']:,.0f}x" if "speedup_vs_load" in s else "")
    return table


def _headline_table(headline: dict[str, Any] | None) -> Any:
    table = Table(title="Headline: the smallest variant within 1 accuracy point of the best round, against dense")
    if headline is None:
        table.add_column("no variant kept the dense model's accuracy (or none was evaluated)")
        return table
    for column in ("", "params", "smaller", "host fp32 ms", "faster", "accuracy", "max |error|"):
        table.add_column(column, justify="left" if not column else "right")

    def ms(value: Any) -> str:
        return "" if value is None else f"{value:.3f}"

    table.add_row("dense (round 0)", f"{headline['dense_params']:,}", "1.00x", ms(headline["dense_ms"]), "1.00x",
                  f"{100 * headline['dense_accuracy']:.1f}% (best round {100 * headline['best_accuracy']:.1f}%)", "")
    table.add_row(f"ours: {headline['variant']} (exact compaction)", f"{headline['params']:,}",
                  f"{headline['size_ratio']:.2f}x", ms(headline["ms"]),
                  "" if headline["latency_ratio"] is None else f"{headline['latency_ratio']:.2f}x",
                  f"{100 * headline['accuracy']:.1f}%", f"{headline['exactness_error']:.1e}")
    if headline.get("original_size_ratio") is not None:
        table.add_row("original DNNShifter rule, same masks (batch-norms fused)", "",
                      f"{headline['original_size_ratio']:.2f}x (ours {headline['ours_fused_size_ratio']:.2f}x)", "",
                      "", "", f"{headline['original_max_error']:.1e}")
    return table
