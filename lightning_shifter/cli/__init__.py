"""The ``lightning-shifter`` command: one subcommand per step of the pipeline, one module per subcommand.

::

    lightning-shifter demo                      # everything, on scikit-learn's digits, offline
    lightning-shifter fit --config cfg.yaml     # your LightningModule/DataModule with the callbacks
    lightning-shifter compact model.pt2 --portfolio portfolio/
    lightning-shifter export portfolio/ --datamodule my.data.DataModule
    lightning-shifter bench portfolio/ --runner
    lightning-shifter runner build --target host aarch64
    lightning-shifter device list|deploy|bench|switch portfolio/
    lightning-shifter report portfolio/ --session session.json

Each subcommand is a module of this package (``cli/demo.py``, ``cli/fit.py``, ...) whose ``add``
function registers its parser in :data:`SUBCOMMANDS` and sets its ``handler``; handlers import their
(heavy) modules when they run, so ``--help`` stays fast and the deployment commands (``export``,
``bench``, ``runner``, ``device``, ``report``) never import Lightning or training code. What they share
is :mod:`lightning_shifter.cli.common`. Exit codes: 0 success, 1 the command failed (a
:class:`~lightning_shifter.errors.ShifterError`: one ``error:`` line says why and what to do), 2 bad
usage (argparse's message), 130 interrupted. ``python -m lightning_shifter.cli`` is the same command.

Example::

    >>> from lightning_shifter.cli import build_parser, main
    >>> build_parser().parse_args(["report", "portfolio/"]).command
    'report'
    >>> main(["report", "portfolio/"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lightning_shifter import __version__
from lightning_shifter.cli import bench, compact, demo, device, export, fit, report, runner
from lightning_shifter.cli.common import CommandError
from lightning_shifter.errors import ShifterError

__all__ = ["SUBCOMMANDS", "CommandError", "build_parser", "main"]


#: One registration function per subcommand, in pipeline order.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    demo.add, fit.add, compact.add, export.add, bench.add, runner.add, device.add, report.add,
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
