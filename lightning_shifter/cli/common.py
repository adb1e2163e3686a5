"""What the ``lightning-shifter`` subcommands share: the error they raise, the console and progress bars,
argument types, and loading a user's classes.

Example::

    >>> from lightning_shifter.cli.common import fraction, json_object
    >>> fraction("0.25"), json_object('{"width": 8}')
    (0.25, {'width': 8})
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning_shifter.errors import ShifterError


class CommandError(ShifterError):
    """A failure the user can fix: printed as ``error: <message>``, exit code 1."""


def rich_console() -> Any:
    """A rich console on the ``sys.stdout`` of this moment (made per call, so that tests can capture it);
    logs and pipes get wide tables."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 180)


def line_printer(console: Any) -> Callable[[str], None]:
    """Prints plain text lines (paths: no markup, no wrapping) on ``console``."""
    return lambda line: console.print(line, soft_wrap=True, markup=False, highlight=False)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A rich progress display with a bar, counts and elapsed time (silent when not ``enabled``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=rich_console(), disable=not enabled, transient=False) as progress:
        yield progress


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text}")
    return value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 8}}', got {text!r} ({err})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 8}}', got {text!r}")
    return value


def import_class(path: str, what: str) -> type:
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


def load_datamodule(path: str | None, init_args: dict[str, Any]) -> Any:
    """An instantiated, set-up LightningDataModule from its class path (``None`` when not given)."""
    if path is None:
        return None
    cls = import_class(path, "datamodule")
    try:
        datamodule = cls(**init_args)
        datamodule.setup("fit")
    except TypeError as err:
        raise CommandError(f"cannot create {path} with {init_args}: {err}; fix --datamodule-args") from None
    return datamodule


def add_datamodule_args(parser: argparse.ArgumentParser, purpose: str) -> None:
    parser.add_argument("--datamodule", metavar="CLASS_PATH",
                        help=f"a LightningDataModule class path, e.g. lightning_shifter.demo.DigitsDataModule: {purpose}")
    parser.add_argument("--datamodule-args", type=json_object, default={}, metavar="JSON",
                        help="its constructor arguments as a JSON object (default: {})")


@contextmanager
def lightning_errors() -> Iterator[None]:
    """Lightning's configuration errors (of either package) as a :class:`CommandError`: they explain themselves."""
    from lightning_shifter._lightning import classes

    try:
        yield
    except classes("utilities.exceptions.MisconfigurationException") as err:
        raise CommandError(str(err)) from None
