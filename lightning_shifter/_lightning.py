"""Both Lightning packages: ``lightning.pytorch`` (``import lightning.pytorch as pl``) and the standalone
``pytorch_lightning`` (``import pytorch_lightning as pl``).

They ship the same API twice as distinct classes: ``lightning.pytorch.Trainer`` refuses a
``pytorch_lightning.LightningModule``, and ``isinstance`` against one package's ``EarlyStopping`` misses
the other's. The callbacks of this package derive from both packages' ``Callback`` and raise an error
that is both packages' ``MisconfigurationException``, so either Trainer (and either package's
``LightningCLI``) takes them and ``except MisconfigurationException`` works with either import.
Everything else they use of the Trainer (hooks, loops, strategy) is the same API in both.

This module is also the one place that reads Lightning's private attributes (:data:`PRIVATE`: what the
public API does not tell), each through an accessor that names the attribute when a Lightning release
no longer has it, and the place of the callbacks' rank convention (:func:`on_rank_zero`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import Any, TypeVar

import lightning.pytorch
import lightning_utilities.core.rank_zero

from lightning_shifter.errors import ShifterError


def _packages() -> tuple[ModuleType, ...]:
    # Importing pytorch_lightning points the rank-zero logging both packages share (lightning_utilities)
    # at its own logger: keep it where the project's own imports put it.
    shared = lightning_utilities.core.rank_zero
    routing = shared.log, shared.rank_zero_deprecation_category
    try:
        import pytorch_lightning
    except ImportError:  # `lightning` installs it too, but it can be uninstalled on its own
        return (lightning.pytorch,)
    finally:
        shared.log, shared.rank_zero_deprecation_category = routing
    return (lightning.pytorch, pytorch_lightning)


PACKAGES = _packages()


@cache
def classes(path: str) -> tuple[type, ...]:
    """The class at ``path`` below each installed Lightning package, e.g. ``"callbacks.EarlyStopping"``."""
    module_path, _, name = path.rpartition(".")
    return tuple(getattr(importlib.import_module(f"{package.__name__}.{module_path}"), name) for package in PACKAGES)


class Callback(*classes("callbacks.Callback")):  # type: ignore[misc]
    """A Lightning ``Callback`` of both packages (the hooks are the same; none is overridden here)."""


class MisconfigurationException(  # type: ignore[misc]
        *classes("utilities.exceptions.MisconfigurationException"), ShifterError):
    """A configuration error: caught by ``except MisconfigurationException`` of either package (and as a
    :class:`~lightning_shifter.errors.ShifterError`)."""


def package_of(obj: object) -> str:
    """The top-level package that defines ``obj``'s class, e.g. ``"lightning"`` or ``"pytorch_lightning"``."""
    return type(obj).__module__.partition(".")[0]


T = TypeVar("T")

#: The private attributes of Lightning this package reads (where they live -> what for); each is read
#: only through the accessor below it, and tests/test_lightning_packages.py checks them on every release
#: of either package.
PRIVATE = {
    "Trainer.fit_loop.epoch_loop.val_loop._data_source": "where fit's validation data comes from (val_data_source)",
    "callbacks.Timer._duration": "the time limit of a Timer, None without one (timer_duration)",
}


def _private(owner: Any, name: str, where: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise RuntimeError(
            f"{where} is gone in this Lightning release ({lightning.pytorch.__version__}); lightning-shifter reads it "
            f"for {PRIVATE[where]}: use the Lightning version this lightning-shifter supports (lightning>=2.6,<2.7) "
            "or a lightning-shifter release made for yours"
        ) from None


def val_data_source(trainer: Any) -> Any:
    """Where ``fit``'s validation data comes from (the datamodule, the module or ``fit(val_dataloaders=...)``):
    its ``dataloader()`` gives the user's own loaders again (the full set, not a distributed shard) and
    ``is_defined()`` tells whether there are any. Lightning keeps it in a private attribute."""
    where = "Trainer.fit_loop.epoch_loop.val_loop._data_source"
    return _private(trainer.fit_loop.epoch_loop.val_loop, "_data_source", where)


def timer_duration(timer: Any) -> float | None:
    """A ``Timer`` callback's time limit in seconds (``Trainer(max_time=...)``), None without one. Lightning
    keeps it in a private attribute."""
    return _private(timer, "_duration", "callbacks.Timer._duration")


def adopt_class_keyed_state(callback: Any, checkpoint: dict[str, Any]) -> None:
    """Call from a callback's ``on_load_checkpoint``: a state that a checkpoint of an earlier version keyed
    by the class name alone is taken as this callback's (its ``state_key`` names more now). Lightning
    restores the callbacks' states from ``checkpoint`` right after that hook; it falls back on the class
    itself as a key, never on its name.

    Example::

        >>> from lightning_shifter import Compaction
        >>> from lightning_shifter._lightning import adopt_class_keyed_state
        >>> checkpoint = {"callbacks": {"Compaction": {"saved_rounds": [0, 1]}}}
        >>> callback = Compaction("portfolio/")
        >>> adopt_class_keyed_state(callback, checkpoint)
        >>> checkpoint["callbacks"][callback.state_key]
        {'saved_rounds': [0, 1]}
    """
    states = checkpoint.get("callbacks") or {}
    name = type(callback).__qualname__
    if callback.state_key not in states and name in states:
        states[callback.state_key] = states[name]


def on_rank_zero(trainer: Any, work: Callable[[], T], what: str) -> T | None:
    """Run ``work()`` on global rank 0 while every rank waits for it; all go on together, or all stop.

    The other ranks learn from a broadcast whether rank 0 failed: rank 0 raises its own error, every other
    rank a ``RuntimeError`` saying that rank 0 could not ``what`` and why (a plain barrier would leave
    them waiting forever after a failure). Returns ``work()``'s result on rank 0, None elsewhere.

    Example (one process: rank 0 is all there is)::

        >>> from types import SimpleNamespace
        >>> from lightning_shifter._lightning import on_rank_zero
        >>> single = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(broadcast=lambda obj: obj))
        >>> on_rank_zero(single, lambda: "saved", "save the variant")
        'saved'
    """
    failure: Exception | None = None
    result = None
    if trainer.is_global_zero:
        try:
            result = work()
        except Exception as err:
            failure = err
    message = None if failure is None else f"{type(failure).__name__}: {failure}"
    rank_zero_failure = trainer.strategy.broadcast(message)
    if failure is not None:
        raise failure
    if rank_zero_failure is not None:
        raise RuntimeError(f"rank 0 could not {what}: {rank_zero_failure}")
    return result
