"""The examples in the docstrings run and show what the code does: the one place they are doctested.

Each module is run with ``doctest.testmod``; lines that need a phone or a built native runner carry
``# doctest: +SKIP``, everything else runs (tiny models, temporary folders).
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

import lightning_shifter
import lightning_shifter.device

# every module of the package whose docstrings hold examples
MODULES = [
    "lightning_shifter._lightning",
    "lightning_shifter.batches",
    "lightning_shifter.cli",
    "lightning_shifter.cli.common",
    "lightning_shifter.compaction",
    "lightning_shifter.compaction.original",
    "lightning_shifter.compaction.report",
    "lightning_shifter.compaction.rules",
    "lightning_shifter.compaction.sets",
    "lightning_shifter.criteria",
    "lightning_shifter.demo",
    "lightning_shifter.demo.data",
    "lightning_shifter.demo.models",
    "lightning_shifter.device.builds",
    "lightning_shifter.device.facts",
    "lightning_shifter.device.harness",
    "lightning_shifter.device.locator",
    "lightning_shifter.device.runner",
    "lightning_shifter.device.transport",
    "lightning_shifter.errors",
    "lightning_shifter.export",
    "lightning_shifter.imp",
    "lightning_shifter.masks",
    "lightning_shifter.policy",
    "lightning_shifter.portfolio",
    "lightning_shifter.pt2",
    "lightning_shifter.report",
    "lightning_shifter.runtime",
    "lightning_shifter.schema",
    "lightning_shifter.sessions",
    "lightning_shifter.signals",
    "lightning_shifter.trial",
    "lightning_shifter.variants",
]

# exceptions and plain result records: their fields are documented, an example would add nothing
RECORDS = {
    "CommandResult", "CompactionError", "Deployment", "DeviceBench", "DeviceError", "DeviceLost", "DeviceSwitch",
    "ExportError", "ExportReport", "PortfolioError", "RoundRecord", "RunnerBuild", "RunnerError", "RunnerSession",
    "SwitchError", "SwitchReport", "VariantBench",
}
# their examples train a model for several epochs: shown as code, not run here
NOT_RUN = {"Compaction", "ExecuTorchExport"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see above)"
    assert result.attempted > 0, f"{name} has no example that runs"


def _public() -> list[tuple[str, object]]:
    """Public names that need an example (every one but the exceptions and result records)."""
    names = [(n, getattr(lightning_shifter, n)) for n in lightning_shifter.__all__ if n != "__version__"]
    names += [(n, getattr(lightning_shifter.device, n)) for n in lightning_shifter.device.__all__]
    return [(n, obj) for n, obj in names if n not in RECORDS]


@pytest.mark.parametrize(("name", "obj"), _public(), ids=[n for n, _ in _public()])
def test_every_public_name_has_an_example(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    if name in NOT_RUN:
        assert "Example::" in doc
        return
    assert ">>>" in doc, f"{name} has no doctest example"
    assert obj.__module__ in MODULES, f"{obj.__module__} (defines {name}) is not doctested here"
