"""``lightning-shifter report``: a self-contained HTML page of a portfolio and switching sessions.
Deployment side: no Lightning, no training code."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_shifter.cli.common import CommandError, rich_console


def run(args: argparse.Namespace) -> int:
    from lightning_shifter.report import write_report
    from lightning_shifter.sessions import load_session

    sessions = {}
    for path in args.session:
        try:
            sessions[path.stem] = load_session(path)
        except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise CommandError(f"cannot read the session log {path}: {err}") from None
    with rich_console().status("writing the report"):
        try:
            page = write_report(args.portfolio, args.out, sessions=sessions)
        except ValueError as err:
            raise CommandError(str(err)) from None
    rich_console().print(f"report: {page}")
    return 0


def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="a self-contained HTML page (and PNGs) of a portfolio and switching sessions",
        description="Write index.html (images embedded, no scripts: it opens offline) and its PNG figures: "
                    "accuracy against size, MACs and latency, channels kept per layer, switching timelines.",
    )
    parser.add_argument("portfolio", type=Path, help="the portfolio folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <portfolio>/report)")
    parser.add_argument("--session", type=Path, action="append", default=[], metavar="FILE.json",
                        help="a switching-session log to plot (repeatable)")
    parser.set_defaults(handler=run)
