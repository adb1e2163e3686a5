"""lightning-shifter: a portfolio of small, exact, switchable model variants from one training run.

Public names are imported lazily so that the deployment side (``Portfolio``, ``Switcher``,
``lightning_shifter.device``) never imports Lightning or training code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "IterativeMagnitudePruning": "lightning_shifter.imp",
    "RoundRecord": "lightning_shifter.imp",
    "compact": "lightning_shifter.compaction",
    "CompactionResult": "lightning_shifter.compaction",
    "CompactionError": "lightning_shifter.compaction",
    "Compaction": "lightning_shifter.callbacks",
    "ExecuTorchExport": "lightning_shifter.callbacks",
    "Portfolio": "lightning_shifter.portfolio",
    "Variant": "lightning_shifter.portfolio",
    "PortfolioError": "lightning_shifter.portfolio",
    "export_portfolio": "lightning_shifter.export",
    "ExportReport": "lightning_shifter.export",
    "ExportError": "lightning_shifter.export",
    "add_variant": "lightning_shifter.variants",
    "Switcher": "lightning_shifter.runtime",
    "SwitchError": "lightning_shifter.runtime",
    "LatencyBudget": "lightning_shifter.policy",
    "MemoryBudget": "lightning_shifter.policy",
    "MinAccuracy": "lightning_shifter.policy",
    "AllOf": "lightning_shifter.policy",
    "CpuLoadSignal": "lightning_shifter.signals",
    "ScheduleSignal": "lightning_shifter.signals",
    "PowerThermalSignal": "lightning_shifter.signals",
    "write_report": "lightning_shifter.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_shifter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from lightning_shifter.callbacks import Compaction, ExecuTorchExport
    from lightning_shifter.compaction import CompactionError, CompactionResult, compact
    from lightning_shifter.export import ExportError, ExportReport, export_portfolio
    from lightning_shifter.imp import IterativeMagnitudePruning, RoundRecord
    from lightning_shifter.policy import AllOf, LatencyBudget, MemoryBudget, MinAccuracy
    from lightning_shifter.portfolio import Portfolio, PortfolioError, Variant
    from lightning_shifter.report import write_report
    from lightning_shifter.runtime import Switcher, SwitchError
    from lightning_shifter.signals import CpuLoadSignal, PowerThermalSignal, ScheduleSignal
    from lightning_shifter.variants import add_variant
