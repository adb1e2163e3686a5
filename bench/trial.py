"""What the trial load (``lightning_shifter.trial``) costs when a program is loaded in Python.

Every ``.pte`` the Python side loads is first loaded and run once in a forked child, so that a
program that crashes the ExecuTorch runtime is an error instead of the end of the process. This
measures, side by side in one run, for the variants of a portfolio (default torchvision ResNet-18,
10 classes, 1x3x32x32, at densities 0.8^k with the IMP-like masks of ``bench/compaction.py``,
compacted and exported fp32) and for a tiny program:

- load: ``Runtime.load_program`` + ``load_method("forward")`` alone, as before the trial existed;
- trial: ``trial_load`` of the one program (fork, load and one inference in the child);
- first load: ``runtime.load_method`` of a program not tried before (trial + load), and its ratio
  to the load alone; a program tried once in a process is not tried again (``load_method`` later);
- a whole ``Switcher`` (every variant, latencies taken from the manifest) with and without the
  trial, and a batch trial of every variant in one child against one child per variant.

Files are touched (``os.utime``) before each timed trial, which makes them new to the trial cache.

Run: ``python bench/trial.py [--model resnet18] [--ks 0,12,24] [--repeats 5]``; writes
``bench/results/trial.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))


def timed_ms(fn, repeats: int, before=lambda: None) -> float:
    samples = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    from export import MODELS, SHAPE, build_portfolios  # bench/export.py
    from executorch.runtime import Runtime

    from lightning_shifter import trial
    from lightning_shifter.export import export_portfolio
    from lightning_shifter.portfolio import Portfolio
    from lightning_shifter.runtime import Switcher, load_method
    from lightning_shifter.variants import add_variant

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--ks", default="0,12,24", help="density exponents k (density 0.8^k)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "trial.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="bench-trial-"))
    try:
        root, _ = build_portfolios(work, args.model, [int(k) for k in args.ks.split(",")])
        tiny = Portfolio.create(work / "tiny", (1, 16))
        add_variant(tiny, nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), torch.zeros(1, 16),
                    name="tiny", round=0)
        for portfolio_root in (root, tiny.root):
            export_portfolio(portfolio_root, ("fp32",), runs=3)
        portfolio = Portfolio.open(root)
        programs = {f"{args.model} {v.name}": portfolio.file_path(v.name, "fp32") for v in portfolio.variants}
        programs["tiny MLP"] = Portfolio.open(tiny.root).file_path("tiny", "fp32")

        rows = []
        for label, path in programs.items():
            def touch(path: Path = path) -> None:
                os.utime(path)  # a new modification time: the trial cache has not seen this file

            load = timed_ms(lambda: Runtime.get().load_program(path).load_method("forward"), args.repeats)
            tried = timed_ms(lambda: trial.trial_load([path]), args.repeats, touch)
            first = timed_ms(lambda: load_method(path), args.repeats, touch)
            again = timed_ms(lambda: load_method(path), args.repeats)
            rows.append({"program": label, "mib": path.stat().st_size / 2**20, "load_ms": load, "trial_ms": tried,
                         "first_load_ms": first, "first_over_load": first / load, "later_load_ms": again})

        paths = list(programs.values())[:-1]
        touch_all = lambda: [os.utime(p) for p in paths]  # noqa: E731
        batch = timed_ms(lambda: trial.trial_load(paths), args.repeats, touch_all)
        one_by_one = timed_ms(lambda: [trial.trial_load([p]) for p in paths], args.repeats, touch_all)
        switcher_tried = timed_ms(lambda: Switcher(root, measure=False), args.repeats, touch_all)
        real = trial.trial_load
        trial.trial_load = lambda paths, timeout_s=trial.TIMEOUT_S: {Path(p): None for p in paths}
        import lightning_shifter.runtime as runtime_module
        runtime_module.trial_load = trial.trial_load
        switcher_plain = timed_ms(lambda: Switcher(root, measure=False), args.repeats)
        runtime_module.trial_load = trial.trial_load = real
    finally:
        shutil.rmtree(work, ignore_errors=True)

    console = Console(width=150)
    table = Table(title=f"Trial load before loading a program in Python ({os.cpu_count()} cores; medians of "
                        f"{args.repeats})")
    for column in ("program", "MiB", "load ms", "trial ms", "first load ms (trial + load)", "first / load",
                   "later loads ms"):
        table.add_column(column, justify="left" if column == "program" else "right")
    for row in rows:
        table.add_row(row["program"], f"{row['mib']:.1f}", f"{row['load_ms']:.2f}", f"{row['trial_ms']:.1f}",
                      f"{row['first_load_ms']:.1f}", f"{row['first_over_load']:.1f}x", f"{row['later_load_ms']:.2f}")
    console.print(table)
    summary = Table(title=f"A whole portfolio: {len(paths)} {args.model} variants")
    for column in ("what", "ms", "ratio"):
        summary.add_column(column, justify="left" if column == "what" else "right")
    summary.add_row("Switcher without trial", f"{switcher_plain:.1f}", "1.00")
    summary.add_row("Switcher with trial (one child for all)", f"{switcher_tried:.1f}",
                    f"{switcher_tried / switcher_plain:.2f}")
    summary.add_row("trial of every variant, one child", f"{batch:.1f}", "")
    summary.add_row("trial of every variant, one child each", f"{one_by_one:.1f}", f"{one_by_one / batch:.2f} x batch")
    console.print(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "input_shape": list(SHAPE), "cores": os.cpu_count(), "programs": rows,
        "switcher_ms": {"without_trial": switcher_plain, "with_trial": switcher_tried},
        "switcher_ratio": switcher_tried / switcher_plain, "batch_trial_ms": batch, "one_child_each_ms": one_by_one,
    }, indent=2))


if __name__ == "__main__":
    main()
