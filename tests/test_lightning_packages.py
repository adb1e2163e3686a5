"""The callbacks in projects of either Lightning package: ``lightning.pytorch`` or ``pytorch_lightning``.

Each test runs a small project written against one package (its LightningModule, DataModule,
Trainer, callbacks and logger), as a user of that package has it.
"""

from __future__ import annotations

import importlib
import json
import signal
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_shifter import Compaction, ExecuTorchExport, IterativeMagnitudePruning
from lightning_shifter.portfolio import Portfolio

PACKAGES = ["lightning.pytorch", "pytorch_lightning"]


def project(pl):
    """The project's module and data, written against the Lightning package ``pl``."""

    class LitMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=self.trainer.estimated_stepping_batches)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class Clusters(pl.LightningDataModule):
        def setup(self, stage=None):
            generator = torch.Generator().manual_seed(0)
            centers = torch.randn(4, 16, generator=generator) * 3
            y = torch.randint(0, 4, (320,), generator=generator)
            x = centers[y] + torch.randn(320, 16, generator=generator)
            self.train_set, self.val_set = TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:])

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=32)

        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=64)

    return LitMLP, Clusters


def imp(**kwargs) -> IterativeMagnitudePruning:
    return IterativeMagnitudePruning(**{"rounds": 2, "epochs_per_round": 1, "rewind_step": 2, "verbose": False,
                                        **kwargs})


def trainer(pl, root: Path, callbacks, **kwargs):
    return pl.Trainer(**{"accelerator": "cpu", "devices": 1, "max_epochs": 3, "default_root_dir": root,
                         "callbacks": callbacks, "enable_progress_bar": False, "enable_model_summary": False,
                         "num_sanity_val_steps": 0, "deterministic": True, **kwargs})


@pytest.fixture(params=PACKAGES)
def pl(request):
    return importlib.import_module(request.param)


def test_a_fit_is_interrupted_and_resumed(pl, tmp_path):
    LitMLP, Clusters = project(pl)

    class Crash(pl.Callback):
        def on_pruning_round_end(self, trainer, pl_module, record):
            if record.round == 1:
                raise RuntimeError("the machine went down")

    def callbacks(*extra):
        return [imp(), Compaction(tmp_path / "portfolio", example_input_shape=(1, 16), keep="all"), *extra,
                pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)]

    first = callbacks(Crash())
    assert all(isinstance(c, pl.Callback) for c in first)
    pl.seed_everything(0)
    with pytest.raises(RuntimeError, match="went down"):
        trainer(pl, tmp_path, first, logger=pl.loggers.CSVLogger(tmp_path)).fit(LitMLP(), datamodule=Clusters())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = callbacks()
        fit = trainer(pl, tmp_path, resumed, logger=pl.loggers.CSVLogger(tmp_path))
        fit.fit(LitMLP(), datamodule=Clusters(), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert fit.log_dir.endswith("version_1")  # the logger's folder changed with the resume ...
    assert [str(w.message) for w in caught if "already holds" in str(w.message)] == []  # ... resuming is no surprise

    assert [r.round for r in resumed[0].records] == [0, 1, 2]
    assert Portfolio.open(tmp_path / "portfolio").names == ["round-00", "round-01", "round-02"]
    summaries = sorted(tmp_path.rglob("imp_rounds.json"))  # ... but the record stays one file, continued
    assert summaries == [tmp_path / "lightning_logs" / "version_0" / "imp_rounds.json"]
    assert [r["round"] for r in json.loads(summaries[0].read_text())["rounds"]] == [0, 1, 2]


@pytest.mark.parametrize("stopper", ["EarlyStopping", "Timer"])
def test_early_stopping_and_timers_of_either_package_are_refused(pl, tmp_path, stopper):
    LitMLP, Clusters = project(pl)
    callback = pl.callbacks.EarlyStopping("val_acc") if stopper == "EarlyStopping" else pl.callbacks.Timer("00:01:00:00")
    with pytest.raises(pl.utilities.exceptions.MisconfigurationException, match=f"{stopper}"):
        trainer(pl, tmp_path, [imp(), callback]).fit(LitMLP(), datamodule=Clusters())


def test_a_fit_stopped_early_names_what_stopped_it(pl, tmp_path):
    LitMLP, Clusters = project(pl)

    class StopAfterRoundOne(pl.Callback):
        def on_pruning_round_end(self, trainer, pl_module, record):
            trainer.should_stop = record.round == 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruning = imp(rounds=3)
        trainer(pl, tmp_path, [pruning, StopAfterRoundOne()], max_epochs=4, logger=False).fit(
            LitMLP(), datamodule=Clusters())
    assert [r.round for r in pruning.records] == [0, 1]
    messages = [str(w.message) for w in caught if "scheduled rounds" in str(w.message)]
    assert messages == [
        "IterativeMagnitudePruning: the fit ended after 2 of 4 scheduled rounds because trainer.should_stop was set "
        "by LitMLP (the LightningModule) or StopAfterRoundOne, first seen at epoch 1, step 16. The completed rounds "
        "are recorded (and saved, with Compaction); to train the others, remove what stopped the fit and resume it "
        "with trainer.fit(..., ckpt_path=<last checkpoint>)"
    ]


def test_callbacks_pass_alone_or_in_a_list_and_export(pl, tmp_path):
    LitMLP, Clusters = project(pl)
    pruning = imp(rounds=1)
    trainer(pl, tmp_path, pruning, max_epochs=2, logger=False).fit(LitMLP(), datamodule=Clusters())
    assert [r.round for r in pruning.records] == [0, 1]

    callbacks = [imp(rounds=1), Compaction(tmp_path / "portfolio", example_input_shape=(1, 16), keep="all"),
                 ExecuTorchExport(precisions=("fp32",), runs=2)]
    trainer(pl, tmp_path, callbacks, max_epochs=2, logger=False).fit(LitMLP(), datamodule=Clusters())
    portfolio = Portfolio.open(tmp_path / "portfolio")
    assert [sorted(v.files) for v in portfolio.variants] == [["fp32", "pt2"], ["fp32", "pt2"]]


def test_ctrl_c_says_how_many_rounds_ran(tmp_path):
    import lightning.pytorch as pl

    LitMLP, Clusters = project(pl)

    class CtrlC(pl.Callback):
        def on_pruning_round_end(self, trainer, pl_module, record):
            if record.round == 1:
                raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT from there on, then exits
    try:
        with pytest.raises(SystemExit), pytest.warns(UserWarning) as caught:
            trainer(pl, tmp_path, [imp(), CtrlC()], logger=False).fit(LitMLP(), datamodule=Clusters())
    finally:
        signal.signal(signal.SIGINT, handler)
    assert [str(w.message) for w in caught if "scheduled rounds" in str(w.message)] == [
        "IterativeMagnitudePruning: the fit ended after 2 of 3 scheduled rounds because it was interrupted "
        "(KeyboardInterrupt). The completed rounds are recorded (and saved, with Compaction); to train the others, "
        "resume it with trainer.fit(..., ckpt_path=<last checkpoint>)"
    ]


def test_the_private_attributes_read_are_still_there(pl, tmp_path):
    """Lightning's private attributes this package reads (lightning_shifter._lightning.PRIVATE), in either
    package: a Lightning release that renames one fails here, naming it."""
    from lightning_shifter import _lightning

    LitMLP, Clusters = project(pl)
    fit = trainer(pl, tmp_path, [], logger=False, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    fit.fit(LitMLP(), datamodule=Clusters())
    checks = {  # each reads the attribute and checks it holds what the package expects
        "Trainer.fit_loop.epoch_loop.val_loop._data_source":
            lambda: len(_lightning.val_data_source(fit).dataloader().dataset) == 64,  # the datamodule's val set
        "callbacks.Timer._duration": lambda: _lightning.timer_duration(pl.callbacks.Timer("00:00:02:00")) == 120,
    }
    assert set(checks) == set(_lightning.PRIVATE)  # a new private attribute needs its check here
    assert {where: check() for where, check in checks.items()} == dict.fromkeys(checks, True)


def test_a_private_attribute_that_is_gone_is_named():
    from lightning.pytorch.callbacks import Timer

    from lightning_shifter._lightning import timer_duration

    timer = Timer("00:00:01:00")
    del timer._duration  # what a Lightning release without it looks like
    with pytest.raises(RuntimeError, match=r"callbacks.Timer._duration is gone in this Lightning release .* "
                                           r"the time limit of a Timer"):
        timer_duration(timer)
