"""Shared fixtures: the digits data (loaded once) and a quiet, tiny CPU Trainer."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import settings

from lightning_shifter.demo import DigitsDataModule

# Test models are tiny: a second intra-op thread gains nothing, and on a loaded 2-core machine
# OpenMP threads spinning at barriers slowed single tests down by 10-50x.
torch.set_num_threads(1)

# Hypothesis profiles. "repeatable" (the default, so `make test` and CI): the same pseudo-random
# examples on every run, so a red run is reproducible anywhere. "thorough": 1,000 new examples per
# property, for a search before a release or after changing compaction:
#     .venv/bin/python -m pytest tests/test_compaction_properties.py --hypothesis-profile=thorough
# (a failure prints the example's seed and its reproduction blob).
settings.register_profile("repeatable", derandomize=True, print_blob=True, max_examples=200)
settings.register_profile("thorough", derandomize=False, print_blob=True, max_examples=1000)
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    """The real scikit-learn digits, split once per session (the DataModule is stateless after setup)."""
    dm = DigitsDataModule(batch_size=32, seed=0)
    dm.setup("fit")
    return dm


@pytest.fixture
def make_trainer(tmp_path):
    """``make_trainer(**overrides)``: a deterministic CPU Trainer with no logger, bar or summary."""

    def make(**overrides: Any) -> pl.Trainer:
        kwargs: dict[str, Any] = dict(
            accelerator="cpu",
            devices=1,
            deterministic=True,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            limit_train_batches=6,
            limit_val_batches=2,
            num_sanity_val_steps=0,
        )
        kwargs.update(overrides)
        return pl.Trainer(**kwargs)

    return make


@pytest.fixture
def server(monkeypatch):
    """The loopback adb server stand-in (tests/fake_adb.py), stopped with the test."""
    from fake_adb import FakeAdbServer

    # adbutils starts a real adb server when it cannot connect: point it at nothing instead
    monkeypatch.setenv("ADBUTILS_ADB_PATH", "/nonexistent/adb")
    with FakeAdbServer(command_timeout_s=60.0) as fake:
        yield fake
