"""The ``lightning-shifter`` command.

Each subcommand is registered by one ``_add_<name>`` function in :data:`SUBCOMMANDS` that adds its
parser and sets ``handler``; handlers import their (heavy) modules lazily so ``--help`` stays fast.
Exit codes: 0 success, 1 the command failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_shifter import __version__


class CommandError(Exception):
    """A failure the user can fix: printed as ``error: <message>``, exit code 1."""


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


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from lightning_shifter.demo import run_demo

    # the demo model is tiny: extra intra-op threads only add OpenMP spinning on a busy machine
    torch.set_num_threads(args.threads)
    out = _empty_output_dir(args.out, "demo")
    print(f"lightning-shifter demo: writing to {out}")
    records = run_demo(out, rounds=args.rounds, epochs_per_round=args.epochs_per_round,
                       rewind_step=args.rewind_step, seed=args.seed, progress_bar=not args.no_progress)
    final = records[-1]
    print(f"{len(records)} rounds; final density {final.density:.4f}, "
          f"val_acc {final.metrics.get('val_acc', float('nan')):.4f}; results in {out}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train a small ResNet on scikit-learn's digits with iterative magnitude pruning",
        description="Train DigitsResNet on the digits bundled with scikit-learn (no download) with "
                    "iterative magnitude pruning and rewinding, and print the per-round table.",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder, empty or new (default: a fresh folder under runs/)")
    parser.add_argument("--rounds", type=_positive_int, default=10, help="pruning rounds (default: 10)")
    parser.add_argument("--epochs-per-round", type=_positive_int, default=2, help="epochs per round (default: 2)")
    parser.add_argument("--rewind-step", type=int, default=10, help="optimizer step to rewind to (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=_run_demo)


#: One registration function per subcommand; later stages (compact, export, bench, device, report) add theirs.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-shifter",
        description="Turn one Lightning training run into a portfolio of small, exact, switchable model variants.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits with 2 on bad usage
    try:
        return args.handler(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that explain themselves: shown as one line instead of a traceback."""
    if "lightning" not in sys.modules:  # nothing imported Lightning, so it raised nothing
        return (CommandError,)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (CommandError, MisconfigurationException)


if __name__ == "__main__":
    sys.exit(main())
