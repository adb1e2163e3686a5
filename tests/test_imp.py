"""IterativeMagnitudePruning inside real (tiny) Lightning fits on the digits data."""

from __future__ import annotations

import copy
import json
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_shifter import IterativeMagnitudePruning, RoundRecord
from lightning_shifter.criteria import ChannelAwareMagnitude, magnitude
from lightning_shifter.imp import prune_fraction_for
from lightning_shifter.demo import DigitsResNet
from lightning_shifter.masks import dead_output_channels, keep_count


class DigitsMLP(pl.LightningModule):
    """A plain classifier as a user writes it: Adam and a step-interval LR schedule, no validation."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ListLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[dict[str, float], int]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((dict(metrics), step))


def _state(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
    return {
        "model": copy.deepcopy(module.state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
        "scheduler": copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict()),
    }


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class Probe(Callback):
    """Independent checks, placed after the IMP callback so its hooks see IMP's effects."""

    def __init__(self, imp: IterativeMagnitudePruning) -> None:
        self.imp = imp
        self.saved: dict[str, Any] | None = None
        self.steps_checked = 0
        self.rewinds_checked: list[int] = []
        self.notified: list[RoundRecord] = []

    def _assert_masked(self, module: pl.LightningModule) -> None:
        params = dict(module.named_parameters())
        for name, mask in {**self.imp.masks, **self.imp.norm_masks}.items():
            assert torch.count_nonzero(params[name][~mask]) == 0, name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._assert_masked(pl_module)
        self.steps_checked += 1
        if self.saved is None and trainer.global_step == self.imp.rewind_step:
            self.saved = _state(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        r = self.imp.current_round
        if r == 0 or trainer.current_epoch != r * self.imp.epochs_per_round:
            return
        assert self.saved is not None
        masks = {**self.imp.masks, **self.imp.norm_masks}
        expected = {k: v * masks[k] if k in masks else v for k, v in self.saved["model"].items()}
        now = _state(trainer, pl_module)
        _assert_same(now["model"], expected, "model")
        _assert_same(now["optimizer"], self.saved["optimizer"], "optimizer")
        _assert_same(now["scheduler"], self.saved["scheduler"], "scheduler")
        self.rewinds_checked.append(r)

    def on_pruning_round_end(self, trainer, pl_module, record: RoundRecord) -> None:
        assert self.imp.current_round == record.round  # before the next prune / rewind
        assert trainer.current_epoch == record.epoch
        self._assert_masked(pl_module)
        if record.round > 0:  # trained, not the rewind point
            weight = next(iter(self.imp.masks))
            assert not torch.equal(pl_module.state_dict()[weight], self.saved["model"][weight] * self.imp.masks[weight])
        self.notified.append(record)


@pytest.mark.parametrize("criterion", [magnitude, ChannelAwareMagnitude(alpha=2.0)], ids=["magnitude", "channel"])
def test_rounds_densities_masks_and_rewinding(digits, make_trainer, tmp_path, capsys, criterion):
    pl.seed_everything(0)
    model = DigitsResNet(width=4, schedule_epochs=2)
    imp = IterativeMagnitudePruning(
        target_densities=[0.5, 0.1, 0.02], epochs_per_round=2, rewind_step=3, summary_file=tmp_path / "imp.json",
        criterion=criterion,
    )
    probe, logger = Probe(imp), ListLogger()
    trainer = make_trainer(max_epochs=50, callbacks=[imp, probe], logger=logger)
    trainer.fit(model, datamodule=digits)

    total = sum(p.numel() for n, p in model.named_parameters() if n in imp.masks)
    assert set(imp.masks) == {n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    assert [r.round for r in imp.records] == [0, 1, 2, 3]
    assert [r.epoch for r in imp.records] == [1, 3, 5, 7]
    assert trainer.current_epoch == 8, "the fit stops after the last round, not at max_epochs"
    assert [r.target_density for r in imp.records] == [1.0, 0.5, 0.1, 0.02]
    assert sum(int(m.sum()) for m in imp.masks.values()) == keep_count(total, 0.02)
    nonzero = sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters() if n in imp.masks)
    assert imp.records[-1].density == nonzero / total
    assert abs(imp.records[-1].density - 0.02) <= 1 / total
    assert all("val_acc" in r.metrics and "val_loss" in r.metrics for r in imp.records)

    # masks after every step, rewinds at the start of rounds 1..3, every round end announced
    assert probe.steps_checked == 8 * 6
    assert probe.rewinds_checked == [1, 2, 3]
    assert probe.notified == imp.records

    # at 2% density whole filters die: their norm's affine is masked, and they output exact zeros
    modules = dict(model.named_modules())
    assert ["stem.0", "stem.1"] in imp.norm_pairs and len(imp.norm_pairs) == 6
    dead_total = 0
    for layer, norm in imp.norm_pairs:
        dead = dead_output_channels(modules[layer], imp.masks[f"{layer}.weight"])
        assert torch.equal(imp.norm_masks[f"{norm}.weight"], ~dead)
        assert torch.count_nonzero(modules[norm].bias[dead]) == 0
        dead_total += int(dead.sum())
    assert dead_total > 0
    model.eval()
    stem_out = model.stem(torch.randn(4, 1, 8, 8))
    dead_stem = dead_output_channels(modules["stem.0"], imp.masks["stem.0.weight"])
    assert torch.count_nonzero(stem_out[:, dead_stem]) == 0

    # loggers, progress bar, summary file, table
    imp_logs = [m for m, _ in logger.logged if "imp/density" in m]
    assert [m["imp/round"] for m in imp_logs] == [0, 1, 2, 3]
    assert trainer.progress_bar_metrics["round"] == 3
    summary = json.loads((tmp_path / "imp.json").read_text())
    assert [RoundRecord.from_dict(r) for r in summary["rounds"]] == imp.records
    assert "Iterative magnitude pruning" in capsys.readouterr().out


def test_step_schedulers_accumulation_and_no_validation(digits, make_trainer):
    pl.seed_everything(0)
    model = DigitsMLP()
    imp = IterativeMagnitudePruning(rounds=2, epochs_per_round=2, rewind_step=4, summary_file=None, verbose=False)
    probe = Probe(imp)
    trainer = make_trainer(max_epochs=6, callbacks=[imp, probe], limit_val_batches=0, accumulate_grad_batches=2)
    trainer.fit(model, datamodule=digits)
    # 6 batches / 2 accumulated = 3 steps per epoch; round ends recorded at on_train_epoch_end
    assert [(r.round, r.epoch, r.global_step) for r in imp.records] == [(0, 1, 6), (1, 3, 12), (2, 5, 18)]
    assert probe.rewinds_checked == [1, 2]
    assert probe.saved["scheduler"]["last_epoch"] == 4
    assert int(probe.saved["optimizer"]["state"][0]["step"]) == 4
    total = sum(m.numel() for m in imp.masks.values())
    assert sum(int(m.sum()) for m in imp.masks.values()) == keep_count(total, 0.64)


def test_without_a_logger_the_summary_goes_to_the_root_dir_and_never_to_the_current_folder(
        digits, make_trainer, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for root in (None, tmp_path / "run"):  # Trainer(default_root_dir=...) not given, then given
        imp = IterativeMagnitudePruning(rounds=1, epochs_per_round=1, rewind_step=0, verbose=False)
        make_trainer(max_epochs=2, callbacks=[imp], default_root_dir=root).fit(DigitsMLP(), datamodule=digits)
    assert sorted(p.name for p in work.iterdir()) == []  # nothing left in the current folder
    assert len(json.loads((tmp_path / "run" / "imp_rounds.json").read_text())["rounds"]) == 2


def test_rewind_to_initialization(digits, make_trainer):
    pl.seed_everything(0)
    model = DigitsMLP()
    initial = copy.deepcopy(model.state_dict())
    imp = IterativeMagnitudePruning(rounds=1, epochs_per_round=1, rewind_step=0, summary_file=None, verbose=False)

    class AtRoundOne(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.state = copy.deepcopy(pl_module.state_dict())

    check = AtRoundOne()
    make_trainer(max_epochs=2, callbacks=[imp, check], limit_val_batches=0).fit(model, datamodule=digits)
    for name, value in initial.items():
        mask = {**imp.masks, **imp.norm_masks}.get(name)
        assert torch.equal(check.state[name], value if mask is None else value * mask), name


class ManualTwoSteps(DigitsMLP):
    """Manual optimization, two optimizer steps per batch; checks the masks after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.imp: IterativeMagnitudePruning | None = None
        self.checked = 0

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        x, y = batch
        for _ in range(2):
            optimizer.zero_grad()
            self.manual_backward(F.cross_entropy(self(x), y))
            optimizer.step()
            for name, param in self.named_parameters():
                mask = self.imp.masks.get(name)
                if mask is not None:
                    assert torch.count_nonzero(param[~mask]) == 0
                    self.checked += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)


def test_masks_hold_after_every_step_under_manual_optimization(digits, make_trainer):
    pl.seed_everything(0)
    model = ManualTwoSteps()
    model.imp = IterativeMagnitudePruning(rounds=1, epochs_per_round=1, rewind_step=2, summary_file=None,
                                          verbose=False)
    make_trainer(max_epochs=2, callbacks=[model.imp], limit_val_batches=0).fit(model, datamodule=digits)
    assert model.checked == 6 * 2 * 2  # 6 batches of round 1, 2 steps each, 2 masked weights


def _resume_run(digits, make_trainer, ckpt_dir, ckpt_path=None, criterion=magnitude):
    pl.seed_everything(0)
    model = DigitsResNet(width=4, schedule_epochs=2)
    imp = IterativeMagnitudePruning(target_densities=[0.05, 0.02], epochs_per_round=2, rewind_step=3,
                                    summary_file=None, verbose=False, criterion=criterion)
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(max_epochs=10, callbacks=[imp, checkpoints], enable_checkpointing=True)
    trainer.fit(model, datamodule=digits, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return model, imp


def _without_time(records: list[RoundRecord]) -> list[tuple]:
    return [(r.round, r.density, r.epoch, r.global_step, r.metrics["val_acc"], r.metrics["val_loss"]) for r in records]


@pytest.mark.parametrize(
    "epoch, criterion",
    [
        pytest.param(1, magnitude, id="round-boundary-before-prune"),
        pytest.param(2, magnitude, id="mid-round-after-prune"),
        pytest.param(5, magnitude, id="after-the-last-round"),
        pytest.param(2, ChannelAwareMagnitude(alpha=2.0), id="mid-round-after-prune-channel-aware"),
        # the resumed fit prunes before its first batch: the criterion is bound from the checkpoint's input spec
        pytest.param(1, ChannelAwareMagnitude(alpha=2.0), id="round-boundary-before-prune-channel-aware"),
    ],
)
def test_resume_reproduces_the_uninterrupted_run(digits, make_trainer, tmp_path, epoch, criterion):
    full_model, full_imp = _resume_run(digits, make_trainer, tmp_path / "full", criterion=criterion)
    ckpt = tmp_path / "full" / f"epoch={epoch}.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"]["IterativeMagnitudePruning"]
    assert state["current_round"] == epoch // 2 and len(state["records"]) == (epoch + 1) // 2

    model, imp = _resume_run(digits, make_trainer, tmp_path / "resumed", ckpt_path=ckpt, criterion=criterion)
    _assert_same(model.state_dict(), full_model.state_dict(), "model")
    _assert_same(imp.masks, full_imp.masks, "masks")
    _assert_same(imp.norm_masks, full_imp.norm_masks, "norm_masks")
    assert not all(bool(m.all()) for m in full_imp.norm_masks.values()), "dead channels make the comparison count"
    assert _without_time(imp.records) == _without_time(full_imp.records)


class BindingCriterion:
    """Plain magnitude that records how the callback binds it to the model (``for_model``)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.bound: list[tuple[nn.Module, list[tuple[int, ...]]]] = []

    def for_model(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]):
        self.bound.append((model, [tuple(x.shape) for x in example_inputs]))
        if self.fail:
            raise RuntimeError("this model has no graph")
        return magnitude

    def __call__(self, weights, layers):
        assert self.fail, "a criterion that was bound scores through what for_model returned"
        return magnitude(weights, layers)


@pytest.mark.parametrize("fail", [False, True], ids=["bound", "untraceable"])
def test_the_criterion_is_bound_to_the_model_once_per_fit(digits, make_trainer, fail):
    pl.seed_everything(0)
    model, criterion = DigitsResNet(width=4), BindingCriterion(fail)
    imp = IterativeMagnitudePruning(target_densities=[0.3, 0.1], epochs_per_round=1, rewind_step=2,
                                    summary_file=None, verbose=False, criterion=criterion)
    trainer = make_trainer(max_epochs=5, callbacks=[imp], limit_train_batches=4, limit_val_batches=1)
    if fail:  # the fit goes on with the unbound criterion, and says why
        with pytest.warns(UserWarning, match=r"scores each layer on its own.*RuntimeError: this model has no graph"):
            trainer.fit(model, datamodule=digits)
    else:
        trainer.fit(model, datamodule=digits)
    assert criterion.bound == [(model, [(1, 1, digits.image_size, digits.image_size)])]
    total = sum(m.numel() for m in imp.masks.values())
    assert sum(int(m.sum()) for m in imp.masks.values()) == keep_count(total, 0.1)


def test_resume_with_another_schedule_or_criterion_is_refused(digits, make_trainer, tmp_path):
    _resume_run(digits, make_trainer, tmp_path / "full")
    imp = IterativeMagnitudePruning(target_densities=[0.05, 0.01], epochs_per_round=2, rewind_step=3)
    trainer = make_trainer(max_epochs=8, callbacks=[imp])
    with pytest.raises(MisconfigurationException, match="different pruning schedule"):
        trainer.fit(DigitsResNet(width=4), datamodule=digits, ckpt_path=tmp_path / "full" / "epoch=2.ckpt")
    imp = IterativeMagnitudePruning(target_densities=[0.05, 0.02], epochs_per_round=2, rewind_step=3,
                                    criterion=ChannelAwareMagnitude(alpha=2.0))
    trainer = make_trainer(max_epochs=8, callbacks=[imp])
    with pytest.raises(MisconfigurationException, match=r"criterion magnitude, this callback has ChannelAwareMagnitude"):
        trainer.fit(DigitsResNet(width=4), datamodule=digits, ckpt_path=tmp_path / "full" / "epoch=2.ckpt")


# ---------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rounds=2, prune_fraction=0.0), r"prune_fraction must lie in \(0, 1\)"),
        (dict(rounds=2, prune_fraction=1.0), r"prune_fraction must lie in \(0, 1\)"),
        (dict(rounds=2, prune_fraction=-0.2), r"prune_fraction must lie in \(0, 1\)"),
        (dict(target_densities=[0.8, 1.2]), r"must all lie in \(0, 1\)"),
        (dict(target_densities=[0.8, 0.0]), r"must all lie in \(0, 1\)"),
        (dict(target_densities=[0.5, 0.6]), "strictly decreasing"),
        (dict(target_densities=[]), "empty"),
        (dict(rounds=2, target_densities=[0.5]), "not both"),
        (dict(), "give the schedule"),
        (dict(rounds=0), "rounds must be a positive integer"),
        (dict(rounds=2, rewind_step=-1), "rewind_step must be a non-negative integer"),
        (dict(rounds=2, final_density=0.01, prune_fraction=0.5), "prune_fraction or final_density, not both"),
        (dict(rounds=2, final_density=1.5), r"final_density must lie in \(0, 1\)"),
        (dict(target_densities=[0.5], final_density=0.1), "not both"),
        (dict(rounds=2, criterion="magnitude"), "criterion must be a callable"),
    ],
)
def test_bad_arguments(kwargs, message):
    kwargs.setdefault("epochs_per_round", 1)
    with pytest.raises(MisconfigurationException, match=message):
        IterativeMagnitudePruning(**kwargs)


def test_final_density_sets_the_fraction_per_round():
    imp = IterativeMagnitudePruning(rounds=15, final_density=0.005, epochs_per_round=1)
    assert imp.target_densities[-1] == pytest.approx(0.005)
    assert imp.target_densities[1] == pytest.approx(1 - prune_fraction_for(0.005, 15))
    ratios = [b / a for a, b in zip(imp.target_densities, imp.target_densities[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # the same fraction every round


def test_epochs_per_round_must_be_positive():
    with pytest.raises(MisconfigurationException, match="epochs_per_round must be a positive integer"):
        IterativeMagnitudePruning(rounds=1, epochs_per_round=0)


class StepCounter(Callback):
    steps = 0

    def on_train_batch_end(self, *args):
        self.steps += 1


@pytest.mark.parametrize(
    "imp_kwargs, trainer_kwargs, message",
    [
        (dict(rounds=3, epochs_per_round=2), dict(max_epochs=7), r"max_epochs=7\) is too small.*max_epochs >= 8"),
        (dict(rounds=1, epochs_per_round=1, exclude=[nn.Conv2d, nn.Linear]), {}, "no prunable parameters"),
        (dict(rounds=1, epochs_per_round=1, include=["stem.9"]), {}, "include pattern 'stem.9' matches no module"),
        (dict(rounds=1, epochs_per_round=1), dict(callbacks=[EarlyStopping("val_loss")]), "EarlyStopping would end"),
        (dict(rounds=1, epochs_per_round=1), dict(max_time="00:01:00:00"), "Timer with a duration"),
        (dict(rounds=1, epochs_per_round=1), dict(min_epochs=5), r"min_epochs=5\) would train past"),
        # 6 batches accumulated by 2 = 3 steps per epoch, 2 epochs in round 0
        (dict(rounds=1, epochs_per_round=2, rewind_step=7), dict(accumulate_grad_batches=2),
         r"rewind_step=7 lies beyond round 0, which has 6 optimizer steps.*rewind_step <= 6"),
        (dict(rounds=1, epochs_per_round=2, rewind_step=0), dict(max_steps=20), r"it needs 24 optimizer steps"),
        (dict(rounds=1, epochs_per_round=2, rewind_step=0), dict(min_steps=30), r"min_steps=30\) would train past"),
    ],
)
def test_bad_configurations_fail_before_training(digits, make_trainer, imp_kwargs, trainer_kwargs, message):
    imp = IterativeMagnitudePruning(**imp_kwargs)
    counter = StepCounter()
    trainer_kwargs = {"max_epochs": 10, **trainer_kwargs}
    trainer_kwargs["callbacks"] = [imp, counter, *trainer_kwargs.get("callbacks", [])]
    model = DigitsResNet(width=4)
    initial = copy.deepcopy(model.state_dict())
    with pytest.raises(MisconfigurationException, match=message):
        make_trainer(**trainer_kwargs).fit(model, datamodule=digits)
    assert counter.steps == 0
    _assert_same(model.state_dict(), initial, "model")


# ---------------------------------------------------------------------- the demo command
def test_demo_command(tmp_path, capsys):
    from lightning_shifter.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--rounds", "1", "--final-density", "0.5", "--epochs-per-round", "1", "--rewind-step", "5",
            "--no-progress", "--width", "8", "--image-size", "8", "--precisions", "fp32", "--runner", "skip",
            "--session-seconds", "0.5"]
    assert main([*args, "--out", str(out)]) == 0
    summary = json.loads(next(out.rglob("imp_rounds.json")).read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["metrics"]["val_acc"] > 0.5  # real digits, learnt in two epochs
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert "Iterative magnitude pruning" in capsys.readouterr().out

    assert main([*args, "--out", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    late = ["demo", "--rounds", "1", "--epochs-per-round", "1", "--rewind-step", "1000", "--no-progress"]
    assert main([*late, "--out", str(tmp_path / "late")]) == 1
    assert "rewind_step=1000 lies beyond round 0" in capsys.readouterr().err
    for bad, code in ((["demo", "--rounds", "0"], 2), (["frobnicate"], 2), (["--help"], 0)):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == code
