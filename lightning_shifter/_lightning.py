"""Both Lightning packages: ``lightning.pytorch`` (``import lightning.pytorch as pl``) and the standalone
``pytorch_lightning`` (``import pytorch_lightning as pl``).

They ship the same API twice as distinct classes: ``lightning.pytorch.Trainer`` refuses a
``pytorch_lightning.LightningModule``, and ``isinstance`` against one package's ``EarlyStopping`` misses
the other's. The callbacks of this package derive from both packages' ``Callback`` and raise an error
that is both packages' ``MisconfigurationException``, so either Trainer (and either package's
``LightningCLI``) takes them and ``except MisconfigurationException`` works with either import.
Everything else they use of the Trainer (hooks, loops, strategy) is the same API in both.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

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
