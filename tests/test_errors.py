"""One exception root: every error the package raises on purpose is a ShifterError, and keeps the builtin
base that callers have caught it as."""

from __future__ import annotations

import importlib

import pytest

from lightning_shifter.errors import ShifterError

# error class -> the builtin it has always been besides (callers catch it as that)
ERRORS = {
    "lightning_shifter.schema.SchemaError": ValueError,
    "lightning_shifter.portfolio.PortfolioError": Exception,
    "lightning_shifter.pt2.ProgramError": Exception,
    "lightning_shifter.export.ExportError": RuntimeError,
    "lightning_shifter.compaction.CompactionError": Exception,
    "lightning_shifter.runtime.SwitchError": ValueError,
    "lightning_shifter.device.transport.DeviceError": RuntimeError,
    "lightning_shifter.device.harness.DeviceLost": RuntimeError,
    "lightning_shifter.device.runner.RunnerError": RuntimeError,
    "lightning_shifter.cli.CommandError": Exception,
    "lightning_shifter._lightning.MisconfigurationException": Exception,
}


@pytest.mark.parametrize("path", sorted(ERRORS))
def test_every_error_is_a_shifter_error_and_keeps_its_builtin_base(path: str) -> None:
    module, _, name = path.rpartition(".")
    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, ShifterError)
    assert issubclass(error, ERRORS[path])


def test_our_configuration_error_is_both_lightning_packages_one() -> None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException as Fabric
    from lightning_fabric.utilities.exceptions import MisconfigurationException as Standalone

    from lightning_shifter._lightning import MisconfigurationException

    assert all(issubclass(MisconfigurationException, base) for base in (Fabric, Standalone, ShifterError))
