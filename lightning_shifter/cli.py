"""The ``lightning-shifter`` command: one subcommand per step of the pipeline.

::

    lightning-shifter demo                      # everything, on scikit-learn's digits, offline
    lightning-shifter fit --config cfg.yaml     # your LightningModule/DataModule with the callbacks
    lightning-shifter compact model.pt2 --portfolio portfolio/
    lightning-shifter export portfolio/ --datamodule my.data.DataModule
    lightning-shifter bench portfolio/ --runner
    lightning-shifter runner build --target host aarch64
    lightning-shifter device list|deploy|bench|switch portfolio/
    lightning-shifter report portfolio/ --session session.json

Each subcommand is registered by one ``_add_<name>`` function in :data:`SUBCOMMANDS` that adds its
parser and sets ``handler``; handlers import their (heavy) modules lazily so ``--help`` stays fast.
Exit codes: 0 success, 1 the command failed (one ``error:`` line says why and what to do), 2 bad
usage (argparse's message), 130 interrupted.

Example::

    >>> from lightning_shifter.cli import main
    >>> main(["report", "portfolio/"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning_shifter import __version__
from lightning_shifter.errors import ShifterError
from lightning_shifter.portfolio import INPUT_DTYPES, PRECISIONS



class CommandError(ShifterError):
    """A failure the user can fix: printed as ``error: <message>``, exit code 1."""


# ---------------------------------------------------------------------------------------- helpers
def _console() -> Any:
    from rich.console import Console

    # created per call: it writes to the sys.stdout of that moment; logs and pipes get wide tables
    return Console(width=None if sys.stdout.isatty() else 180)


def _line_printer(console: Any) -> Callable[[str], None]:
    """Prints plain text lines (paths: no markup, no wrapping) on ``console``."""
    return lambda line: console.print(line, soft_wrap=True, markup=False, highlight=False)


@contextmanager
def _progress(enabled: bool = True) -> Iterator[Any]:
    """A rich progress display with a bar, counts and elapsed time (silent when not ``enabled``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=_console(), disable=not enabled, transient=False) as progress:
        yield progress


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in re.split(r"[,x ]+", text.strip()) if d)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes, batch first, such as 1,3,32,32; got {text!r}")
    return shape


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 8}}', got {text!r} ({err})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 8}}', got {text!r}")
    return value


def _import_class(path: str, what: str) -> type:
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise CommandError(f"{what} {path!r} is not a class path: write it as package.module.ClassName")
    try:
        value = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise CommandError(f"cannot import {what} {path!r} ({err}): check the spelling and that its package is "
                           "installed or on PYTHONPATH") from None
    if not isinstance(value, type):
        raise CommandError(f"{what} {path!r} is a {type(value).__name__}, not a class")
    return value


def _datamodule(path: str | None, init_args: dict[str, Any]) -> Any:
    """An instantiated, set-up LightningDataModule from its class path (``None`` when not given)."""
    if path is None:
        return None
    cls = _import_class(path, "datamodule")
    try:
        datamodule = cls(**init_args)
        datamodule.setup("fit")
    except TypeError as err:
        raise CommandError(f"cannot create {path} with {init_args}: {err}; fix --datamodule-args") from None
    return datamodule


def _add_datamodule_args(parser: argparse.ArgumentParser, purpose: str) -> None:
    parser.add_argument("--datamodule", metavar="CLASS_PATH",
                        help=f"a LightningDataModule class path, e.g. lightning_shifter.demo.DigitsDataModule: {purpose}")
    parser.add_argument("--datamodule-args", type=_json_object, default={}, metavar="JSON",
                        help="its constructor arguments as a JSON object (default: {})")


@contextmanager
def _lightning_errors() -> Iterator[None]:
    """Lightning's configuration errors (of either package) as a :class:`CommandError`: they explain themselves."""
    from lightning_shifter._lightning import classes

    try:
        yield
    except classes("utilities.exceptions.MisconfigurationException") as err:
        raise CommandError(str(err)) from None


# ---------------------------------------------------------------------------------------- demo
def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from lightning_shifter import demo
    from lightning_shifter.device import DeviceError, LocalDevice, find_runner_build

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = _console()
    out = _empty_output_dir(args.out, "demo")
    console.print(f"lightning-shifter demo: writing to {out}")
    started = time.perf_counter()

    device, runner, runner_problem = None, None, None
    if args.runner != "skip":  # first, so that a run that needs the runner fails before training
        device = LocalDevice(out / "native-runner", device_id="host-native")
        with console.status("preparing the native runner"):
            try:
                runner = find_runner_build(device.abi, progress=_line_printer(console))
            except DeviceError as err:
                if args.runner == "require":
                    raise CommandError(str(err)) from None
                runner_problem = str(err)
                console.print(f"[yellow]native runner skipped:[/yellow] {err}")

    with _lightning_errors():
        records, original = demo.run_demo(
            out, model=args.model, width=args.width, image_size=args.image_size, rounds=args.rounds,
            final_density=args.final_density, epochs_per_round=args.epochs_per_round, rewind_step=args.rewind_step,
            alpha=args.alpha, keep=args.keep, seed=args.seed, progress_bar=not args.no_progress)
    training_s = time.perf_counter() - started
    portfolio_dir = out / "portfolio"
    datamodule = demo.DigitsDataModule(seed=args.seed, image_size=args.image_size)
    datamodule.setup("fit")
    report = _export(portfolio_dir, args.precisions, datamodule, None, 1, False, not args.no_progress)
    if report.failed:
        raise CommandError(_failed_programs(report))

    runner_bench = None
    if runner is not None:
        from lightning_shifter.device import bench, deploy

        with console.status(f"benchmarking every program on the native runner ({device.id})"):
            deployment = deploy(device, portfolio_dir, args.precisions, runner=runner)
            runner_bench = bench(device, portfolio_dir, args.precisions, warmup=5, runs=args.runner_runs,
                                 reloads=3, deployment=deployment)

    sessions, switching = _demo_sessions(portfolio_dir, args, device if runner is not None else None, console)
    sessions_dir = out / "sessions"
    sessions_dir.mkdir()
    for title, events in sessions.items():
        (sessions_dir / f"{_slug(title)}.json").write_text(json.dumps({"title": title, "events": events}, indent=1))

    from lightning_shifter.report import write_report

    with console.status("writing the report"):
        page = write_report(portfolio_dir, out / "report", sessions=sessions,
                            notes=demo.original_rule_notes(portfolio_dir, original))
    headline = demo.headline_summary(portfolio_dir, original)
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
    from lightning_shifter.policy import LatencyBudget
    from lightning_shifter.portfolio import Portfolio
    from lightning_shifter.runtime import Switcher, load_method
    from lightning_shifter.sessions import (
        SESSION_INTERVAL_S,
        budget_schedule,
        device_session_events,
        host_switch_session,
        switching_summary,
    )
    from lightning_shifter.signals import ScheduleSignal

    portfolio = Portfolio.open(portfolio_dir, verify=False)
    # switch along the Pareto front: variants that differ in size, not only in training noise
    front = [v.name for v in portfolio.pareto_front()]
    switcher = Switcher(portfolio_dir, args.precisions, variants=front, policy=LatencyBudget(), measure=None)
    # timed at the session's pace (one inference every 10 ms: caches go cold in between), so that the
    # budgets below are ones the chosen programs meet in the session itself
    options = switcher.remeasure(runs=15, interval_s=SESSION_INTERVAL_S)
    schedule = budget_schedule(options, args.session_seconds)
    switcher.signals.append(ScheduleSignal("latency_budget_ms", schedule))
    load_ms = [load_method(portfolio.file_path(o.name, o.precision))[1] for o in switcher.options()]

    sessions, summaries = {}, {}
    with _progress(not args.no_progress) as progress:
        task = progress.add_task("switching session, host ExecuTorch", total=round(args.session_seconds, 1))
        events = host_switch_session(
            switcher, args.session_seconds, on_step=lambda t: progress.update(task, completed=round(t, 1)))
        progress.update(task, completed=round(args.session_seconds, 1))
    sessions["host ExecuTorch Switcher"] = events
    summaries["host ExecuTorch Switcher"] = switching_summary(events, load_ms, inferences=len(events))
    summaries["host ExecuTorch Switcher"]["options"] = [dataclasses.asdict(o) for o in options]

    if device is not None:
        from lightning_shifter.device import device_options, switch_session

        # the runner's latencies differ from the host runtime's: scale its budget to what it measured
        on_device = [o for o in device_options(Portfolio.open(portfolio_dir, verify=False), device.id, args.precisions)
                     if o.name in front and o.latency_ms is not None]
        device_schedule = budget_schedule(on_device, args.session_seconds) if on_device else schedule
        with console.status(f"switching session on the native runner ({device.id})"):
            report = switch_session(device, portfolio_dir, LatencyBudget(),
                                    [ScheduleSignal("latency_budget_ms", device_schedule)],
                                    duration_s=args.session_seconds, precisions=args.precisions, variants=front)
        events = device_session_events(report)
        reload_ms = [v[p]["reload_ms"] for v in (variant.devices.get(device.id, {})
                                                  for variant in Portfolio.open(portfolio_dir, verify=False).variants)
                     for p in args.precisions if p in v]
        sessions[f"native runner ({device.id})"] = events
        summaries[f"native runner ({device.id})"] = switching_summary(events, reload_ms, report.inferences)
    return sessions, summaries


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _portfolio_table(portfolio_dir: Path, runner_id: str | None) -> Any:
    from rich.table import Table

    from lightning_shifter.portfolio import Portfolio

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
    from rich.table import Table

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
    from rich.table import Table

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


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole pipeline on scikit-learn's digits: train, prune, compact, export, bench, switch, report",
        description="Train DigitsResNet on the digits bundled with scikit-learn (real data, no download) with "
                    "iterative magnitude pruning and rewinding, compact every round exactly, export every variant "
                    "to ExecuTorch (fp32 and int8), benchmark them on this host (ExecuTorch and the native runner), "
                    "run a switching session under a latency budget that drops and rises, and write an HTML report.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder, empty or new (default: a fresh folder under runs/)")
    parser.add_argument("--model", choices=("vgg", "resnet"), default="vgg",
                        help="DigitsVGG (over-parameterized, the default) or the small DigitsResNet")
    parser.add_argument("--width", type=_positive_int, default=128,
                        help="channels of the model's first stage (default: 128)")
    parser.add_argument("--image-size", type=_positive_int, default=20,
                        help="digits are resized to this many pixels a side (default: 20)")
    parser.add_argument("--rounds", type=_positive_int, default=10, help="pruning rounds (default: 10)")
    parser.add_argument("--final-density", type=_fraction, default=0.02,
                        help="density after the last round; each round prunes the same fraction (default: 0.02)")
    parser.add_argument("--alpha", type=float, default=3.0,
                        help="ChannelAwareMagnitude's alpha (structure-aware pruning); 0 is plain magnitude, "
                             "DNNShifter's (default: 3)")
    parser.add_argument("--keep", choices=("pareto", "distinct", "all"), default="pareto",
                        help="which rounds become variants (default: pareto, the accuracy / size front and the "
                             "best full-size round)")
    parser.add_argument("--epochs-per-round", type=_positive_int, default=2, help="epochs per round (default: 2)")
    parser.add_argument("--rewind-step", type=int, default=20, help="optimizer step to rewind to (default: 20)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="programs to export (default: fp32 int8)")
    parser.add_argument("--runner", choices=("auto", "require", "skip"), default="auto",
                        help="the native runner benchmark: auto (build and use it if possible, else say why "
                             "and go on), require (fail when it cannot be built), skip (default: auto)")
    parser.add_argument("--runner-runs", type=_positive_int, default=50,
                        help="timed inferences per program on the native runner (default: 50)")
    parser.add_argument("--session-seconds", type=_positive_float, default=4.0,
                        help="length of each switching session (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads for training (default: torch's, one per core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(handler=_run_demo)


# ---------------------------------------------------------------------------------------- fit
def _run_fit(args: argparse.Namespace) -> int:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    # LightningCLI (jsonargparse) gives --config, --print_config, --help and exit code 2 on bad usage
    with _lightning_errors():
        with warnings.catch_warnings():  # it warns that sys.argv is set too: it holds our own arguments
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            cli = LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                               subclass_mode_data=True, args=args.lightning_args, run=False,
                               save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "lightning-shifter fit"})
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return 0


def _add_fit(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit", add_help=False,
        help="train your LightningModule/DataModule with the shifter callbacks from a config (LightningCLI)",
        description="LightningCLI: `lightning-shifter fit --config cfg.yaml`; `fit --help` lists every option, "
                    "`fit --print_config` prints a complete config to start from.",
    )
    parser.set_defaults(handler=_run_fit)


# ---------------------------------------------------------------------------------------- compact
def _load_source(args: argparse.Namespace) -> tuple[Any, tuple[int, ...] | None, float | None]:
    """The model to compact, the input shape it records (if any), and its density when the model's
    layers cannot tell it (an exported program: its weights of two or more dimensions)."""
    import pickle

    import torch

    source: Path = args.source
    if not source.is_file():
        raise CommandError(f"{source} does not exist or is not a file: pass a .pt2 program or a state_dict checkpoint")
    if source.suffix == ".pt2":
        from lightning_shifter.pt2 import load_program

        if args.model_class:
            raise CommandError("--model-class is for state_dict checkpoints; a .pt2 program carries its own graph")
        program = load_program(source)  # refuses archives that ask for pickle or code (ProgramError)
        shapes = [tuple(node.meta["val"].shape) for node in program.graph.nodes
                  if node.op == "placeholder" and node.name in program.graph_signature.user_inputs]
        weights = [w for w in program.state_dict.values() if w.ndim >= 2]  # conv and linear weights
        density = sum(int(w.count_nonzero()) for w in weights) / max(sum(w.numel() for w in weights), 1)
        return program.module(), shapes[0] if len(shapes) == 1 else None, density
    if not args.model_class:
        raise CommandError(f"{source} holds only weights: pass --model-class package.module.Class (and --init-args) "
                           "to build the model they belong to")
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CommandError(f"cannot load {source} with weights_only=True ({str(err).splitlines()[0]}); save a plain "
                           "state_dict (torch.save(model.state_dict(), path)) or a Lightning checkpoint") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"{source} is not a state_dict (a dict of tensors) or a Lightning checkpoint")
    init_args = args.init_args
    if init_args is None:
        init_args = dict(checkpoint.get("hyper_parameters", {})) if "state_dict" in checkpoint else {}
    cls = _import_class(args.model_class, "model class")
    try:
        model = cls(**init_args)
    except TypeError as err:
        raise CommandError(f"cannot create {args.model_class}(**{init_args}): {err}; fix --init-args") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors, all listed
        problems = str(err).splitlines()[1:]
        raise CommandError(f"{source} does not fit {args.model_class}({init_args}): {problems[0].strip()}"
                           f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; pass the "
                           "--init-args the model was trained with") from None
    example = getattr(model, "example_input_array", None)
    return model, tuple(example.shape) if isinstance(example, torch.Tensor) else None, None


def _run_compact(args: argparse.Namespace) -> int:
    from lightning_shifter.batches import example_input
    from lightning_shifter.portfolio import Portfolio
    from lightning_shifter.variants import add_variant

    model, recorded_shape, density = _load_source(args)
    shape = args.input_shape or recorded_shape
    if shape is None:
        raise CommandError("the input shape is unknown: pass --input-shape, batch first, e.g. 1,3,32,32")
    datamodule = _datamodule(args.datamodule, args.datamodule_args)
    portfolio = Portfolio.create(args.portfolio, shape, args.input_dtype)
    name = args.name or args.source.stem
    example = example_input(shape, args.input_dtype)
    console = _console()
    with console.status(f"compacting {args.source} into {args.portfolio}/{name}"):
        variant = add_variant(portfolio, model, example, name=name, round=args.round, density=density,
                              val_data=datamodule.val_dataloader() if datamodule is not None else None)
    summary = variant.compaction
    console.print(
        f"{name}: params {summary['params_before']:,} -> {variant.params:,} "
        f"({summary['params_before'] / max(variant.params, 1):.2f}x smaller), MACs {summary['macs_before']:,} -> "
        f"{variant.macs:,}, channels removed {summary['removed']}, max error {variant.exactness_error:.1e}"
        + "".join(f", {k} {v:.4f}" for k, v in variant.metrics.items())
    )
    if summary["channels_before"] == 0:
        console.print(
            "[yellow]note:[/yellow] compaction found no convolution or linear layer to analyse in this model "
            f"(ops it does not understand: {', '.join(summary['unsupported'][:6])}); the variant is saved "
            "unchanged. A torch.export program holds aten ops, not layers: compact the original nn.Module "
            "(its state_dict with --model-class) to remove channels."
        )
    console.print(f"saved {args.portfolio / name} (model.pt2) and its entry in {args.portfolio / 'manifest.json'}")
    return 0


def _add_compact(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compact", help="compact a sparse model (a .pt2 program or a state_dict) into a portfolio variant",
        description="Remove every channel, filter and neuron that provably does not change the output, verify "
                    "the result, and save it as a variant (model.pt2 + manifest entry) of a portfolio. Checkpoints "
                    "are loaded with torch.load(weights_only=True) and .pt2 programs only after their archive is "
                    "checked: no arbitrary objects are unpickled, no code in the file is run.",
    )
    parser.add_argument("source", type=Path, help="a torch.export program (.pt2) or a state_dict / Lightning checkpoint")
    parser.add_argument("--portfolio", type=Path, required=True, help="the portfolio folder (created if missing)")
    parser.add_argument("--name", help="the variant's name (default: the source's file name without extension)")
    parser.add_argument("--round", type=int, default=0, help="the pruning round it comes from (default: 0)")
    parser.add_argument("--model-class", metavar="CLASS_PATH", help="for a checkpoint: the model's class path")
    parser.add_argument("--init-args", type=_json_object, default=None, metavar="JSON",
                        help="the model's constructor arguments (default: the checkpoint's hyper_parameters, or none)")
    parser.add_argument("--input-shape", type=_shape, default=None, metavar="N,C,H,W",
                        help="input shape, batch first (default: the program's, or the model's example_input_array)")
    parser.add_argument("--input-dtype", default="float32", choices=INPUT_DTYPES,
                        help="input dtype (default: float32; the native runner takes float32 only)")
    _add_datamodule_args(parser, "measures the sparse and compacted accuracy on its val_dataloader()")
    parser.set_defaults(handler=_run_compact)


# ---------------------------------------------------------------------------------------- export
def _export(portfolio_dir: Path, precisions: Sequence[str], datamodule: Any, variants: Sequence[str] | None,
            workers: int, force: bool, progress: bool, measure: bool = True) -> Any:
    """export_portfolio, one variant at a time under a progress bar (all at once with workers > 1)."""
    from lightning_shifter.export import ExportReport, export_portfolio
    from lightning_shifter.portfolio import Portfolio

    names = list(variants) if variants else Portfolio.open(portfolio_dir, verify=False).names
    calibration = datamodule.train_dataloader() if datamodule is not None else None
    validation = datamodule.val_dataloader() if datamodule is not None else None

    def run(subset: list[str]) -> ExportReport:
        try:
            return export_portfolio(portfolio_dir, precisions, calibration, validation, variants=subset,
                                    workers=workers, force=force, measure=measure)
        except ValueError as err:  # bad arguments, explained by export_portfolio, caught before any work
            raise CommandError(str(err)) from None

    programs, started = [], time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task(f"exporting {'/'.join(precisions)} programs", total=len(names) * len(precisions))
        batches = [names] if workers > 1 else [[name] for name in names]
        for batch in batches:
            report = run(batch)
            programs += report.programs
            bar.advance(task, len(report.programs))
    return ExportReport(programs, time.perf_counter() - started, workers)


def _failed_programs(report: Any) -> str:
    failed = "; ".join(f"{p.name}/{p.precision}: {p.error}" for p in report.failed)
    return f"{len(report.failed)} program(s) failed their check and were not listed: {failed}"


def _run_export(args: argparse.Namespace) -> int:
    datamodule = _datamodule(args.datamodule, args.datamodule_args)
    report = _export(args.portfolio, args.precisions, datamodule, args.variants, args.workers, args.force,
                     not args.no_progress, measure=not args.no_measure)
    _console().print(report.table())
    if report.failed:
        raise CommandError(_failed_programs(report))
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="lower every variant of a portfolio to ExecuTorch programs (.pte, fp32 / int8)",
        description="Lower each variant's model.pt2 to an ExecuTorch program with the XNNPACK delegate, check it "
                    "against the PyTorch variant, time it on this host and record it in the manifest. int8 is "
                    "calibrated on the datamodule's training data and must keep its validation accuracy. Programs "
                    "already exported from an unchanged model.pt2 are skipped. Exits 1 if any program fails.",
    )
    parser.add_argument("portfolio", type=Path, help="the portfolio folder")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="programs to make (default: fp32; int8 needs --datamodule)")
    _add_datamodule_args(parser, "int8 calibrates on train_dataloader(), accuracies come from val_dataloader()")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="export only these variants (default: all)")
    parser.add_argument("--workers", type=_positive_int, default=1, help="processes to export in (default: 1)")
    parser.add_argument("--force", action="store_true", help="re-export programs that are up to date")
    parser.add_argument("--no-measure", action="store_true", help="do not time the programs on this host")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_run_export)


# ---------------------------------------------------------------------------------------- bench
def _run_bench(args: argparse.Namespace) -> int:
    from rich.table import Table

    from lightning_shifter.portfolio import Portfolio
    from lightning_shifter.batches import example_input
    from lightning_shifter.runtime import measure_program

    portfolio = Portfolio.open(args.portfolio, verify=True)
    programs = [(v.name, p) for v in portfolio.variants for p in args.precisions if p in v.files]
    if not programs:
        raise CommandError(f"{args.portfolio} has no {'/'.join(args.precisions)} programs: run "
                           f"`lightning-shifter export {args.portfolio}` first")
    example = [example_input(portfolio.input_shape, portfolio.input_dtype)]
    console = _console()
    table = Table(title=f"Host ExecuTorch benchmark of {args.portfolio} ({args.runs} runs after {args.warmup} warm-up)")
    for column in ("variant", "precision", "load ms", "p50 ms", "p90 ms"):
        table.add_column(column, justify="left" if column in ("variant", "precision") else "right")
    with _progress(not args.no_progress) as bar:
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
            build = find_runner_build(device.abi, progress=_line_printer(console))
        with console.status(f"benchmarking every program on the native runner ({device.id})"):
            precisions = [p for p in args.precisions if any(q == p for _, q in programs)]
            deployment = deploy(device, args.portfolio, precisions, runner=build)
            result = bench(device, args.portfolio, precisions, warmup=args.warmup, runs=args.runs, reloads=3,
                           deployment=deployment)
        console.print(result.table())
    return 0


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--runs", type=_positive_int, default=50, help="timed inferences per program (default: 50)")
    parser.add_argument("--runner", action="store_true",
                        help="also benchmark on the native runner (mobile/; built on first use)")
    parser.add_argument("--device-id", default="host-native", help="device id the runner results are recorded under")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the runner and programs are deployed (default: <portfolio>/../.shifter-host-runner)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_run_bench)


# ---------------------------------------------------------------------------------------- runner
def _runner_target(name: str) -> str:
    from lightning_shifter.device.locator import RUNNER_TARGETS  # here: importing it at start-up is slow

    if name not in RUNNER_TARGETS:
        raise argparse.ArgumentTypeError(f"unknown target {name!r}: one of {', '.join(RUNNER_TARGETS)}")
    return name


def _run_runner_build(args: argparse.Namespace) -> int:
    from lightning_shifter.device.locator import build_runner, default_build_root

    console = _console()
    root = args.build_root or default_build_root()
    for target in dict.fromkeys(args.target):  # each once, in the order given
        with console.status(f"building the native runner ({target})"):
            executable = build_runner(target, build_root=root, progress=_line_printer(console))
        _line_printer(console)(f"{target}: {executable}")
    return 0


def _run_runner_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from lightning_shifter.device.locator import RUNNER_TARGETS, default_build_root, runner_sources

    root = args.build_root or default_build_root()
    table = Table(title=f"Native runner targets (sources: {runner_sources()}; builds: {root})")
    for column in ("target", "device ABI", "built automatically", "build", "needs"):
        table.add_column(column)
    for target in RUNNER_TARGETS.values():
        executable = target.executable(root)
        table.add_row(target.name, target.abi or "-", "yes" if target.automatic else "no",
                      str(executable) if executable.is_file() else "not built", target.needs)
    _console().print(table)
    return 0


def _add_runner(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runner", help="build the native runner (mobile/) for this host, linux-aarch64 or Android",
        description="The native runner's sources come with the package. Builds go to build/mobile/ of a source "
                    "checkout, else to a per-user cache (~/.cache/lightning-shifter, keyed by ExecuTorch version "
                    "and target); $SHIFTER_BUILD_DIR overrides both. Commands that need the host runner build it "
                    "on first use; `runner build` builds it (or another target) ahead of time.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    building = actions.add_parser(
        "build", help="build or update the runner; prints the executable's path per target",
        description="Build the runner for each --target (incremental: well under a second when nothing changed) "
                    "and print the path of each executable. `lightning-shifter runner list` shows the targets "
                    "and what each needs.",
    )
    building.add_argument("--target", nargs="+", type=_runner_target, default=["host"], metavar="TARGET",
                          help="what to build: host (default), aarch64, android, arm64-bundle (see `runner list`)")
    listing = actions.add_parser("list", help="the targets, what each needs, and where their builds are",
                                 description="List the runner's build targets, the device ABI each serves, what "
                                             "each needs and the path of its build, if any.")
    for action in (building, listing):
        action.add_argument("--build-root", type=Path, default=None,
                            help="folder of the builds (default: build/mobile of a checkout, else the cache)")
    building.set_defaults(handler=_run_runner_build)
    listing.set_defaults(handler=_run_runner_list)


# ---------------------------------------------------------------------------------------- device
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


def _run_device_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from lightning_shifter.device import adb_client, list_devices

    client = adb_client(args.adb_host, args.adb_port)
    devices = list_devices(client)
    table = Table(title=f"adb devices at {client.host}:{client.port}")
    table.add_column("serial")
    table.add_column("state")
    for serial, state in devices:
        table.add_row(serial, state)
    _console().print(table if devices else "no devices attached: connect a phone with USB debugging enabled")
    return 0


def _run_device_deploy(args: argparse.Namespace) -> int:
    from lightning_shifter.device import deploy

    device = _adb_device(args)
    with _console().status(f"deploying {args.portfolio} to {device.id}"):
        deployment = deploy(device, args.portfolio, args.precisions, build_root=args.build_root)
    _console().print(f"{device.id}: {len(deployment.pushed)} files pushed ({deployment.bytes_pushed / 1e6:.1f} MB), "
                     f"{len(deployment.skipped)} already there and verified; portfolio at {deployment.portfolio_dir}")
    return 0


def _run_device_bench(args: argparse.Namespace) -> int:
    from lightning_shifter.device import AdbDevice, DeviceLost, bench, deploy, on_devices

    console = _console()
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


def _run_device_switch(args: argparse.Namespace) -> int:
    from lightning_shifter.device import DeviceLost, switch_session
    from lightning_shifter.policy import LatencyBudget
    from lightning_shifter.sessions import device_session_events
    from lightning_shifter.signals import ScheduleSignal

    device = _adb_device(args)
    lost = None
    with _console().status(f"switching session on {device.id} for {args.duration:g} s"):
        try:
            report = switch_session(device, args.portfolio, LatencyBudget(),
                                    [ScheduleSignal("latency_budget_ms", args.budget)], duration_s=args.duration,
                                    precisions=args.precisions)
        except DeviceLost as err:  # show and keep what ran before the device went away
            lost, report = err, err.partial
    _console().print(report.table())
    if args.session_out:
        events = device_session_events(report)
        args.session_out.write_text(json.dumps({"title": device.id, "events": events, "summary": report.to_json()},
                                               indent=1))
        _console().print(f"session log: {args.session_out} (lightning-shifter report ... --session {args.session_out})")
    if lost is not None:
        raise lost
    return 0


def _add_device(subparsers: argparse._SubParsersAction) -> None:
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
    listing.set_defaults(handler=_run_device_list)

    deploying = actions.add_parser("deploy", help="push the runner and the programs, verified by sha256",
                                   description="Push the runner built for the device's ABI, its libraries and the "
                                               "portfolio's programs; files already there with the same sha256 are kept.")
    target(deploying)
    deploying.set_defaults(handler=_run_device_deploy)

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
    benching.set_defaults(handler=_run_device_bench)

    switching = actions.add_parser("switch", help="run inference while a latency budget changes; log every switch",
                                   description="Run inference on the device for --duration seconds while the "
                                               "LatencyBudget policy picks the variant under a budget schedule.")
    target(switching)
    switching.add_argument("--duration", type=_positive_float, default=10.0, help="seconds (default: 10)")
    switching.add_argument("--budget", type=_budget_points, default=[(0.0, 5.0), (3.0, 0.5), (6.0, 5.0)],
                           metavar="S:MS,...", help="latency budget over time (default: 0:5,3:0.5,6:5)")
    switching.add_argument("--session-out", type=Path, default=None,
                           help="write the session log (JSON) for `lightning-shifter report --session`")
    switching.set_defaults(handler=_run_device_switch)


# ---------------------------------------------------------------------------------------- report
def _run_report(args: argparse.Namespace) -> int:
    from lightning_shifter.report import write_report
    from lightning_shifter.sessions import load_session

    sessions = {}
    for path in args.session:
        try:
            sessions[path.stem] = load_session(path)
        except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise CommandError(f"cannot read the session log {path}: {err}") from None
    with _console().status("writing the report"):
        try:
            page = write_report(args.portfolio, args.out, sessions=sessions)
        except ValueError as err:
            raise CommandError(str(err)) from None
    _console().print(f"report: {page}")
    return 0


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="a self-contained HTML page (and PNGs) of a portfolio and switching sessions",
        description="Write index.html (images embedded, no scripts: it opens offline) and its PNG figures: "
                    "accuracy against size, MACs and latency, channels kept per layer, switching timelines.",
    )
    parser.add_argument("portfolio", type=Path, help="the portfolio folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <portfolio>/report)")
    parser.add_argument("--session", type=Path, action="append", default=[], metavar="FILE.json",
                        help="a switching-session log to plot (repeatable)")
    parser.set_defaults(handler=_run_report)


# ---------------------------------------------------------------------------------------- main
#: One registration function per subcommand, in pipeline order.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo, _add_fit, _add_compact, _add_export, _add_bench, _add_runner, _add_device, _add_report,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-shifter",
        description="Turn one Lightning training run into a portfolio of small, exact, switchable model variants.",
        epilog="Exit codes: 0 success, 1 failure (the error line says why), 2 bad usage. "
               "`lightning-shifter COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)  # exits with 2 on bad usage
    if args.command == "fit":
        args.lightning_args = rest  # LightningCLI parses them (and exits 2 on bad usage)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ShifterError as err:  # explains itself (what went wrong, what to do): one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
