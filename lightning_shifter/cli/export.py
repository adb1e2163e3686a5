"""``lightning-shifter export``: every variant of a portfolio lowered to checked ExecuTorch programs.

Deployment side: it imports torch and ExecuTorch, never Lightning or training code (a ``--datamodule``
is the user's own class, imported only when given).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_shifter.cli.common import (
    CommandError,
    add_datamodule_args,
    load_datamodule,
    positive_int,
    progress_bar,
    rich_console,
)
from lightning_shifter.portfolio import PRECISIONS, Portfolio


def export_with_progress(portfolio_dir: Path, precisions: Sequence[str], datamodule: Any, variants: Sequence[str] | None,
            workers: int, force: bool, progress: bool, measure: bool = True) -> Any:
    """export_portfolio, one variant at a time under a progress bar (all at once with workers > 1)."""
    from lightning_shifter.export import ExportReport, export_portfolio

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
    with progress_bar(progress) as bar:
        task = bar.add_task(f"exporting {'/'.join(precisions)} programs", total=len(names) * len(precisions))
        batches = [names] if workers > 1 else [[name] for name in names]
        for batch in batches:
            report = run(batch)
            programs += report.programs
            bar.advance(task, len(report.programs))
    return ExportReport(programs, time.perf_counter() - started, workers)


def failed_programs(report: Any) -> str:
    failed = "; ".join(f"{p.name}/{p.precision}: {p.error}" for p in report.failed)
    return f"{len(report.failed)} program(s) failed their check and were not listed: {failed}"


def run(args: argparse.Namespace) -> int:
    datamodule = load_datamodule(args.datamodule, args.datamodule_args)
    report = export_with_progress(args.portfolio, args.precisions, datamodule, args.variants, args.workers, args.force,
                     not args.no_progress, measure=not args.no_measure)
    rich_console().print(report.table())
    if report.failed:
        raise CommandError(failed_programs(report))
    return 0


def add(subparsers: argparse._SubParsersAction) -> None:
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
    add_datamodule_args(parser, "int8 calibrates on train_dataloader(), accuracies come from val_dataloader()")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="export only these variants (default: all)")
    parser.add_argument("--workers", type=positive_int, default=1, help="processes to export in (default: 1)")
    parser.add_argument("--force", action="store_true", help="re-export programs that are up to date")
    parser.add_argument("--no-measure", action="store_true", help="do not time the programs on this host")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run)
