"""``lightning-shifter demo``: the whole pipeline on scikit-learn's digits (:mod:`lightning_shifter.demo.pipeline`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_shifter.cli.common import fraction, positive_float, positive_int
from lightning_shifter.portfolio import PRECISIONS


def run(args: argparse.Namespace) -> int:
    from lightning_shifter.demo.pipeline import run_pipeline

    return run_pipeline(args)


def add(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--width", type=positive_int, default=128,
                        help="channels of the model's first stage (default: 128)")
    parser.add_argument("--image-size", type=positive_int, default=20,
                        help="digits are resized to this many pixels a side (default: 20)")
    parser.add_argument("--rounds", type=positive_int, default=10, help="pruning rounds (default: 10)")
    parser.add_argument("--final-density", type=fraction, default=0.02,
                        help="density after the last round; each round prunes the same fraction (default: 0.02)")
    parser.add_argument("--alpha", type=float, default=3.0,
                        help="ChannelAwareMagnitude's alpha (structure-aware pruning); 0 is plain magnitude, "
                             "DNNShifter's (default: 3)")
    parser.add_argument("--keep", choices=("pareto", "distinct", "all"), default="pareto",
                        help="which rounds become variants (default: pareto, the accuracy / size front and the "
                             "best full-size round)")
    parser.add_argument("--epochs-per-round", type=positive_int, default=2, help="epochs per round (default: 2)")
    parser.add_argument("--rewind-step", type=int, default=20, help="optimizer step to rewind to (default: 20)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="programs to export (default: fp32 int8)")
    parser.add_argument("--runner", choices=("auto", "require", "skip"), default="auto",
                        help="the native runner benchmark: auto (build and use it if possible, else say why "
                             "and go on), require (fail when it cannot be built), skip (default: auto)")
    parser.add_argument("--runner-runs", type=positive_int, default=50,
                        help="timed inferences per program on the native runner (default: 50)")
    parser.add_argument("--session-seconds", type=positive_float, default=4.0,
                        help="length of each switching session (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads for training (default: torch's, one per core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(handler=run)
