"""Thin Lightning adapters: they schedule work and delegate to pure functions."""

from lightning_shifter.callbacks.compaction import Compaction
from lightning_shifter.callbacks.export import ExecuTorchExport

__all__ = ["Compaction", "ExecuTorchExport"]
