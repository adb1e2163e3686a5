"""What a portfolio manifest may hold: types, ranges and sizes of every field any command reads.

A manifest is untrusted input (it travels with the portfolio). :func:`read_json` reads one with
bounded size and nesting and without non-finite numbers; the checks below are composed into the
manifest's schema by :mod:`lightning_shifter.portfolio`. Each check takes ``(value, where)``,
returns the value and raises :class:`SchemaError` naming the field (``where``) and what it must be.
Fields nobody reads are kept as they are, within the same size and nesting limits, so that a newer
writer's additions survive a rewrite.

Example::

    >>> from lightning_shifter.schema import SchemaError, integer, mapping, number, record, text
    >>> timing = record({"p50_ms": number(low=0.0), "device": text(64)})
    >>> timing({"p50_ms": 0.4, "device": "pixel", "note": [1, 2]}, "host.fp32")
    {'p50_ms': 0.4, 'device': 'pixel', 'note': [1, 2]}
    >>> timing({"p50_ms": "fast"}, "host.fp32")
    Traceback (most recent call last):
        ...
    lightning_shifter.schema.SchemaError: host.fp32.p50_ms: expected a number from 0 to 1.8e+308, got 'fast'
    >>> mapping(text(8), integer(high=10))({"a": 11}, "counts")
    Traceback (most recent call last):
        ...
    lightning_shifter.schema.SchemaError: counts.a: expected an integer from 0 to 10, got 11
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from typing import Any

from lightning_shifter.errors import ShifterError

Check = Callable[[Any, str], Any]

MAX_FILE_BYTES = 64 << 20  # a manifest of thousands of variants is a few MiB
MAX_DEPTH = 32  # objects and lists nested in each other
MAX_ITEMS = 100_000  # entries of one object or list
MAX_INT = 2**63 - 1  # what every consumer (C++ int64 included) can hold
MAX_TEXT = 1 << 16


class SchemaError(ShifterError, ValueError):
    """A value that does not have the type, range or size its field requires."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(low: int = 0, high: int = MAX_INT) -> Check:
    """An integer (not a boolean) in ``[low, high]``."""

    def check(value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SchemaError(f"{where}: expected an integer from {low} to {high}, got {_show(value)}")
        return value

    return check


def number(low: float = -sys.float_info.max, high: float = sys.float_info.max, nullable: bool = False) -> Check:
    """A finite number (an integer or a float, not a boolean) in ``[low, high]``; ``None`` too if ``nullable``."""

    def check(value: Any, where: str) -> float | int | None:
        if value is None and nullable:
            return None
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not low <= value <= high):
            raise SchemaError(f"{where}: expected a number from {low:.2g} to {high:.2g}"
                              f"{' or null' if nullable else ''}, got {_show(value)}")
        return value

    return check


def text(max_length: int = MAX_TEXT, pattern: re.Pattern[str] | None = None, nullable: bool = False) -> Check:
    """A string of at most ``max_length`` characters (matching ``pattern`` when given)."""

    def check(value: Any, where: str) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or len(value) > max_length or (pattern and not pattern.fullmatch(value)):
            shape = f"matching {pattern.pattern}" if pattern else f"of at most {max_length} characters"
            raise SchemaError(f"{where}: expected a string {shape}, got {_show(value)}")
        return value

    return check


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(f"{where}: expected true or false, got {_show(value)}")
    return value


def anything(value: Any, where: str) -> Any:
    """Any JSON value (its size and nesting are bounded by :func:`read_json` and :func:`check_json`)."""
    return value


def listing(item: Check, max_items: int = MAX_ITEMS) -> Check:
    """A list of at most ``max_items`` values, each passing ``item``."""

    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or len(value) > max_items:
            raise SchemaError(f"{where}: expected a list of at most {max_items} items, got {_show(value)}")
        return [item(entry, f"{where}[{index}]") for index, entry in enumerate(value)]

    return check


def mapping(key: Check, value: Check, max_items: int = MAX_ITEMS) -> Check:
    """An object whose keys pass ``key`` and values pass ``value``."""

    def check(data: Any, where: str) -> dict[str, Any]:
        if not isinstance(data, dict) or len(data) > max_items:
            raise SchemaError(f"{where}: expected an object of at most {max_items} entries, got {_show(data)}")
        return {key(k, f"{where} key"): value(v, f"{where}.{k}") for k, v in data.items()}

    return check


def record(fields: Mapping[str, Check], required: tuple[str, ...] = (), others: Check = anything) -> Check:
    """An object with the typed ``fields`` (those in ``required`` must be present); any other key
    must pass ``others``."""

    def check(data: Any, where: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object, got {_show(data)}")
        missing = [name for name in required if name not in data]
        if missing:
            raise SchemaError(f"{where}: missing field(s) {', '.join(missing)}")
        return {k: (fields[k] if k in fields else others)(v, f"{where}.{k}") for k, v in data.items()}

    return check


def check_json(data: Any, where: str) -> Any:
    """Bounded nesting and sizes, string keys and finite numbers anywhere in ``data``, checked
    iteratively (a deep value cannot exhaust the stack); an error names the offending field."""
    stack: list[tuple[Any, int, str]] = [(data, 1, where)]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise SchemaError(f"{path}: nested deeper than {MAX_DEPTH} levels")
            if len(value) > MAX_ITEMS:
                raise SchemaError(f"{path}: an object or list of more than {MAX_ITEMS} entries")
            if isinstance(value, dict):
                if not all(isinstance(k, str) for k in value):
                    raise SchemaError(f"{path}: object keys must be strings")
                stack.extend((child, depth + 1, f"{path}.{key}" if path else key) for key, child in value.items())
            else:
                stack.extend((child, depth + 1, f"{path}[{index}]") for index, child in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(f"{path}: holds {value}; JSON numbers must be finite")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise SchemaError(f"{path}: holds an integer beyond 64 bits")
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            raise SchemaError(f"{path}: holds a string of more than {MAX_TEXT} characters")
        elif not isinstance(value, (str, int, float, bool, type(None), dict, list)):
            raise SchemaError(f"{path}: holds a {type(value).__name__}, which is not JSON")
    return data


def _refuse_constant(name: str) -> Any:
    raise SchemaError(f"holds {name}; JSON numbers must be finite")  # where: the parser cannot tell


def read_json(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Parse a JSON file that must be a regular file of at most ``max_bytes``, with bounded nesting
    and finite numbers. Opening never blocks (a FIFO is refused, not waited on).

    Raises:
        SchemaError: what is wrong with the file or its content.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise SchemaError(f"cannot open it ({err.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SchemaError("is not a regular file")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SchemaError(f"is larger than {max_bytes} bytes")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except SchemaError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SchemaError(f"is not valid JSON ({err})") from None
    except (RecursionError, ValueError) as err:  # deep nesting; a number of thousands of digits
        raise SchemaError(f"is not usable JSON ({type(err).__name__}: {str(err)[:120]})") from None
    return check_json(data, "")
