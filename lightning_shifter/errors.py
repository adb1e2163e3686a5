"""The root of every error this package raises on purpose: :class:`ShifterError`.

Each part of the package has its error class (``PortfolioError``, ``SchemaError``, ``ExportError``,
``CompactionError``, ``SwitchError``, ``DeviceError``, ``RunnerError``, ...), all subclasses of
:class:`ShifterError`; classes that callers have long caught as a builtin (``SwitchError`` and
``SchemaError`` as ``ValueError``, ``ExportError``, ``DeviceError`` and ``RunnerError`` as
``RuntimeError``) keep that base too. Their messages name the problem and the remedy, so the
``lightning-shifter`` command shows a ``ShifterError`` as one ``error:`` line (exit code 1) instead of
a traceback. This module imports nothing, so any part of the package can use it.

Example::

    >>> from lightning_shifter.errors import ShifterError
    >>> from lightning_shifter.portfolio import PortfolioError
    >>> from lightning_shifter.schema import SchemaError
    >>> issubclass(PortfolioError, ShifterError), issubclass(SchemaError, (ShifterError, ValueError))
    (True, True)
    >>> try:
    ...     raise SchemaError("input.shape: expected a list")
    ... except ShifterError as err:  # one except for every error that explains itself
    ...     print(f"error: {err}")
    error: input.shape: expected a list
"""

from __future__ import annotations


class ShifterError(Exception):
    """An error that explains itself: what went wrong and what to do about it."""
