"""``lightning-shifter runner``: build the native runner (mobile/) for a target, or list the targets."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightning_shifter.cli.common import line_printer, rich_console


def _runner_target(name: str) -> str:
    from lightning_shifter.device.locator import RUNNER_TARGETS  # here: importing it at start-up is slow

    if name not in RUNNER_TARGETS:
        raise argparse.ArgumentTypeError(f"unknown target {name!r}: one of {', '.join(RUNNER_TARGETS)}")
    return name


def run_build(args: argparse.Namespace) -> int:
    from lightning_shifter.device.locator import build_runner, default_build_root

    console = rich_console()
    root = args.build_root or default_build_root()
    for target in dict.fromkeys(args.target):  # each once, in the order given
        with console.status(f"building the native runner ({target})"):
            executable = build_runner(target, build_root=root, progress=line_printer(console))
        line_printer(console)(f"{target}: {executable}")
    return 0


def run_list(args: argparse.Namespace) -> int:
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
    rich_console().print(table)
    return 0


def add(subparsers: argparse._SubParsersAction) -> None:
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
    building.set_defaults(handler=run_build)
    listing.set_defaults(handler=run_list)
