"""Learning-rate schedules sized from the Trainer span one pruning round, and every round replays it.

A module sizes its schedule from ``trainer.max_epochs`` or ``trainer.estimated_stepping_batches`` as
Lightning's docs show; IterativeMagnitudePruning shows it one round there. Each round must run that
schedule once (OneCycleLR: warm-up to its peak, anneal to its floor), and every round after a rewind
must follow round 0's curve from the rewind step on, holding round 0's last rate to the round's end.
"""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_shifter import IterativeMagnitudePruning

BATCHES = 6  # batches (= optimizer steps) per epoch
EPOCHS_PER_ROUND = 2
ROUND_STEPS = BATCHES * EPOCHS_PER_ROUND
REWIND_STEP = 4
MAX_LR = 0.1


class Scheduled(pl.LightningModule):
    """A classifier whose schedule is sized from the Trainer, as users write it."""

    def __init__(self, schedule: str) -> None:
        super().__init__()
        self.schedule = schedule
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        generator = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(BATCHES * 8, 1, 8, 8, generator=generator),
                                  torch.randint(0, 10, (BATCHES * 8,), generator=generator))
        self.horizon: tuple[int, int] | None = None  # (max_epochs, estimated_stepping_batches) it saw

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=MAX_LR, momentum=0.9)
        trainer = self.trainer
        self.horizon = (trainer.max_epochs, trainer.estimated_stepping_batches)
        if self.schedule == "onecycle-max_epochs":  # the CIFAR-10 baseline tutorial's form
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, MAX_LR, epochs=trainer.max_epochs, steps_per_epoch=len(self.train_dataloader()),
                pct_start=0.25)
            interval = "step"
        elif self.schedule == "onecycle-estimated":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, MAX_LR, total_steps=trainer.estimated_stepping_batches, pct_start=0.25)
            interval = "step"
        elif self.schedule == "cosine-max_epochs":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=trainer.max_epochs)
            interval = "epoch"
        elif self.schedule == "cosine-estimated":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=trainer.estimated_stepping_batches)
            interval = "step"
        elif self.schedule == "onecycle-fixed":  # a hard-coded length: more than a round
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, MAX_LR, total_steps=100)
            interval = "step"
        else:
            raise ValueError(self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


class LearningRates(Callback):
    """The learning rate each optimizer step used, by round."""

    def __init__(self, imp: IterativeMagnitudePruning) -> None:
        self.imp = imp
        self.by_round: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        rates = self.by_round.setdefault(self.imp.current_round, [])
        rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit(schedule: str, tmp_path, ckpt_path=None, checkpoints=None, rewind_step=REWIND_STEP, **imp_kwargs):
    pl.seed_everything(0, verbose=False)
    imp = IterativeMagnitudePruning(rounds=2, epochs_per_round=EPOCHS_PER_ROUND, rewind_step=rewind_step,
                                    summary_file=None, verbose=False, **imp_kwargs)
    rates = LearningRates(imp)
    callbacks = [imp, rates] + ([checkpoints] if checkpoints else [])
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=imp.epochs_needed, callbacks=callbacks,
                         logger=False, enable_checkpointing=checkpoints is not None, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, deterministic=True)
    model = Scheduled(schedule)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, ckpt_path=ckpt_path)
    imp_warnings = [str(w.message) for w in caught if "pruning round" in str(w.message)]
    return trainer, model, imp, rates.by_round, imp_warnings


def one_round_of(schedule: str) -> list[float]:
    """The rates the schedule gives over one round, stepped by itself (no Lightning, no pruning)."""
    model = Scheduled(schedule)
    optimizer = torch.optim.SGD(model.parameters(), lr=MAX_LR, momentum=0.9)
    if schedule.startswith("onecycle"):
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, MAX_LR, total_steps=ROUND_STEPS, pct_start=0.25)
    elif schedule == "cosine-estimated":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=ROUND_STEPS)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS_PER_ROUND)
    rates = []
    for step in range(ROUND_STEPS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule != "cosine-max_epochs" or (step + 1) % BATCHES == 0:
            scheduler.step()
    return rates


@pytest.mark.parametrize("schedule", ["onecycle-max_epochs", "onecycle-estimated", "cosine-max_epochs",
                                      "cosine-estimated"])
def test_every_round_runs_the_schedule_once(schedule, tmp_path):
    trainer, model, imp, rates, imp_warnings = fit(schedule, tmp_path)
    assert model.horizon == (EPOCHS_PER_ROUND, ROUND_STEPS)  # what configure_optimizers saw: one round
    assert trainer.max_epochs == imp.epochs_needed  # the whole fit again, once the optimizers exist
    assert imp_warnings == []
    assert [r.round for r in imp.records] == [0, 1, 2]

    expected = one_round_of(schedule)
    assert rates[0] == pytest.approx(expected, rel=1e-12, abs=0)  # round 0: the whole schedule, once
    if schedule.startswith("onecycle"):  # warms up to its peak and anneals to its floor within the round
        assert max(rates[0]) == pytest.approx(MAX_LR) and rates[0][0] == pytest.approx(MAX_LR / 25)
        assert rates[0][-1] == pytest.approx(MAX_LR / 25 / 1e4)
    else:
        assert rates[0][0] == MAX_LR and rates[0][-1] <= MAX_LR / 2

    # Later rounds start at the rewind step of the same curve. Steps-interval schedules reach round 0's
    # end REWIND_STEP steps before the round does and hold its last rate; an epoch-interval one rewound
    # inside epoch 0 starts at its beginning.
    offset = 0 if schedule == "cosine-max_epochs" else REWIND_STEP
    replay = rates[0][offset:] + [rates[0][-1]] * offset
    for round in (1, 2):
        assert rates[round] == replay, f"round {round}"


def test_turned_off_the_module_sees_the_whole_fit(tmp_path):
    trainer, model, imp, rates, _ = fit("onecycle-estimated", tmp_path, schedule_per_round=False)
    assert model.horizon == (imp.epochs_needed, imp.epochs_needed * BATCHES)
    assert max(rates[0]) == pytest.approx(MAX_LR)  # peak at step 9 of 36: inside round 0 ...
    assert rates[0][-1] > MAX_LR / 2  # ... but round 0 ends far from the floor, and so does every round
    assert rates[1] == rates[2] and rates[1][:ROUND_STEPS - REWIND_STEP] == rates[0][REWIND_STEP:]
    assert rates[1][-1] < rates[0][-1]  # stepped past where round 0 ended, not held


def test_a_schedule_longer_than_a_round_is_named_at_setup(tmp_path):
    _, _, _, rates, imp_warnings = fit("onecycle-fixed", tmp_path)
    assert len(imp_warnings) == 1
    assert "OneCycleLR (learning-rate scheduler 0, stepped every step) is 100 steps long" in imp_warnings[0]
    assert f"a pruning round steps it {ROUND_STEPS} times" in imp_warnings[0]
    assert "self.trainer.estimated_stepping_batches" in imp_warnings[0]
    # still consistent: every later round replays round 0 from the rewind step, then holds its last rate
    assert rates[1] == rates[2] == rates[0][REWIND_STEP:] + [rates[0][-1]] * REWIND_STEP


@pytest.mark.parametrize("epoch", [1, 2])  # end of round 0 (before the prune), mid-round 1 with the scheduler held
def test_resume_with_a_held_scheduler_is_exact(tmp_path, epoch):
    # rewound to step 8 of 12, round 1 holds round 0's last rate from its 4th step: across its epoch boundary
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "full", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    _, full_model, _, full_rates, _ = fit("onecycle-estimated", tmp_path, checkpoints=checkpoints, rewind_step=8)
    assert full_rates[1] == full_rates[0][8:] + [full_rates[0][-1]] * 8
    _, model, _, rates, _ = fit("onecycle-estimated", tmp_path, ckpt_path=tmp_path / "full" / f"epoch={epoch}.ckpt",
                                checkpoints=copy.deepcopy(checkpoints), rewind_step=8)
    for name, value in full_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert rates[1] == full_rates[1][(epoch - 1) * BATCHES:]
    assert rates[2] == full_rates[2]


def test_a_failed_setup_gives_the_trainer_its_horizon_back(tmp_path):
    class Broken(Callback):
        def setup(self, trainer, pl_module, stage):
            raise RuntimeError("broken setup")

    imp = IterativeMagnitudePruning(rounds=2, epochs_per_round=EPOCHS_PER_ROUND, rewind_step=REWIND_STEP,
                                    summary_file=None, verbose=False)
    trainer = pl.Trainer(max_epochs=imp.epochs_needed, callbacks=[imp, Broken()], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="broken setup"):
        trainer.fit(Scheduled("onecycle-estimated"))
    assert trainer.max_epochs == imp.epochs_needed
