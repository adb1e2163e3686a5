"""The Compaction callback with the real IMP callback on digits: portfolio, accuracies, resume, errors."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_shifter.callbacks.compaction as compaction_module
from lightning_shifter import Compaction
from lightning_shifter.demo import DigitsDataModule, DigitsResNet
from lightning_shifter.imp import IterativeMagnitudePruning, RoundRecord
from lightning_shifter.portfolio import Portfolio
from lightning_shifter.variants import evaluate_accuracy

SHAPE = (1, 1, 8, 8)
ROUNDS = 2  # densities 1, 0.25, 0.0625: the last round has whole filters pruned away


def imp() -> IterativeMagnitudePruning:
    return IterativeMagnitudePruning(
        rounds=ROUNDS, epochs_per_round=1, prune_fraction=0.75, rewind_step=2, summary_file=None, verbose=False
    )


def fit(root: Path, callbacks: list[Callback], ckpt_path: str | None = None) -> tuple[pl.Trainer, nn.Module]:
    """A deterministic tiny run on the real digits (limit_val_batches=2 covers the whole val set)."""
    pl.seed_everything(0, verbose=False)
    model = DigitsResNet(width=8, lr=0.1, schedule_epochs=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, deterministic=True, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, max_epochs=ROUNDS + 1, limit_train_batches=25,
        limit_val_batches=2, num_sanity_val_steps=0, callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
    return trainer, model


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """One uninterrupted fit with IMP + Compaction, shared by the end-to-end tests."""
    root = tmp_path_factory.mktemp("run")
    pruning, compaction, lines = imp(), Compaction(root / "portfolio", example_input_shape=SHAPE, keep="all"), LogLines()
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(lines)
    try:
        _, model = fit(root, [pruning, compaction])
    finally:
        logger.removeHandler(lines)
    return SimpleNamespace(root=root, imp=pruning, compaction=compaction, model=model, lines=lines.lines)


@pytest.fixture(scope="module")
def val_set() -> TensorDataset:
    dm = DigitsDataModule()
    dm.setup("fit")
    return dm.val_set


def test_every_round_becomes_a_valid_variant(run: SimpleNamespace) -> None:
    portfolio = Portfolio.open(run.root / "portfolio")  # validates schema, paths, sizes, sha256
    assert portfolio.names == [f"round-{r:02d}" for r in range(ROUNDS + 1)]
    assert run.compaction.portfolio.names == portfolio.names
    assert run.compaction.state_dict() == {"saved_rounds": list(range(ROUNDS + 1))}
    assert portfolio.input_shape == SHAPE and portfolio.input_dtype == "float32"
    for variant, record in zip(portfolio.variants, run.imp.records, strict=True):
        assert variant.round == record.round
        assert variant.density == record.density
        assert set(variant.files) == {"pt2"}
        assert 0.0 <= variant.exactness_error <= 1e-4  # compact() itself enforces DESIGN.md's tolerance
        assert variant.compaction["params_before"] == sum(p.numel() for p in run.model.parameters())
    saved_lines = [line.split()[2] for line in run.lines if line.startswith("Compaction: saved ")]
    assert saved_lines == portfolio.names  # one line per variant, as it is saved


def test_compacted_variants_shrink_as_rounds_prune(run: SimpleNamespace) -> None:
    variants = Portfolio.open(run.root / "portfolio").variants
    dense_params = variants[0].compaction["params_before"]
    assert variants[0].params == dense_params  # round 0 is dense: nothing to remove
    assert variants[-1].params < dense_params
    assert variants[-1].macs < variants[0].macs
    assert [v.density for v in variants] == sorted((v.density for v in variants), reverse=True)


def test_variants_load_back_and_reproduce_the_recorded_accuracy(run: SimpleNamespace, val_set: TensorDataset) -> None:
    portfolio = Portfolio.open(run.root / "portfolio")
    images, labels = val_set.tensors
    assert min(v.metrics["val_acc_compacted"] for v in portfolio.variants) > 0.25  # far from chance: a real check
    for variant, record in zip(portfolio.variants, run.imp.records, strict=True):
        # the same numbers Lightning's own validation loop logged for the sparse model
        assert variant.metrics["val_acc_sparse"] == pytest.approx(record.metrics["val_acc"], abs=1e-6)
        assert variant.metrics["val_acc_compacted"] == variant.metrics["val_acc_sparse"]
        module = portfolio.load_module(variant.name)
        with torch.no_grad():  # exported for batch 1: vmap runs it on each image, much faster than a loop
            predictions = torch.vmap(module)(images.unsqueeze(1)).squeeze(1).argmax(1)
        assert float((predictions == labels).float().mean()) == pytest.approx(variant.metrics["val_acc_compacted"])


def test_the_run_is_bit_identical_to_one_without_the_callback(run: SimpleNamespace, tmp_path: Path) -> None:
    pruning = imp()
    _, model = fit(tmp_path, [pruning])
    with_callback, without = run.model.state_dict(), model.state_dict()
    assert list(with_callback) == list(without)
    for key in without:
        assert torch.equal(with_callback[key], without[key]), key
    assert [r.metrics for r in pruning.records] == [r.metrics for r in run.imp.records]


class Kill(Callback):
    """Dies at the end of a round, after Compaction saved it but before any checkpoint of it."""

    def __init__(self, at_round: int) -> None:
        self.at_round = at_round

    def on_pruning_round_end(self, trainer: pl.Trainer, pl_module: Any, record: RoundRecord) -> None:
        if record.round == self.at_round:
            raise RuntimeError("killed")


def test_a_killed_and_resumed_run_lists_each_round_once(run: SimpleNamespace, tmp_path: Path) -> None:
    portfolio_dir, checkpoints = tmp_path / "portfolio", tmp_path / "checkpoints"

    def callbacks(*extra: Callback) -> list[Callback]:
        return [imp(), Compaction(portfolio_dir, example_input_shape=SHAPE, keep="all"), *extra,
                ModelCheckpoint(dirpath=checkpoints, save_last=True)]

    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path, callbacks(Kill(at_round=1)))
    assert Portfolio.open(portfolio_dir).names == ["round-00", "round-01"]
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0  # the last checkpoint predates round 1, which the resume trains again
    assert next(s for k, s in saved["callbacks"].items() if k.startswith("Compaction")) == {"saved_rounds": [0]}

    resumed = callbacks()
    fit(tmp_path, resumed, ckpt_path=str(checkpoints / "last.ckpt"))

    portfolio = Portfolio.open(portfolio_dir)
    assert portfolio.names == [f"round-{r:02d}" for r in range(ROUNDS + 1)]
    assert resumed[1].saved_rounds == list(range(ROUNDS + 1))
    reference = Portfolio.open(run.root / "portfolio")
    for got, want in zip(portfolio.variants, reference.variants, strict=True):
        assert (got.density, got.params, got.macs, got.metrics) == (want.density, want.params, want.macs, want.metrics)


def test_two_compactions_into_two_folders_keep_their_states_apart_across_a_resume(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"

    def callbacks(*extra: Callback) -> list[Callback]:
        return [imp(), Compaction(tmp_path / "a", example_input_shape=SHAPE, keep="all"),
                Compaction(tmp_path / "b", example_input_shape=SHAPE, keep="all"), *extra,
                ModelCheckpoint(dirpath=checkpoints, save_last=True)]

    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path, callbacks(Kill(at_round=1)))
    states = {k: s for k, s in torch.load(checkpoints / "last.ckpt", weights_only=True)["callbacks"].items()
              if k.startswith("Compaction")}
    assert sorted(states) == [f"Compaction{{'portfolio_dir': '{tmp_path / f}'}}" for f in ("a", "b")]
    assert list(states.values()) == [{"saved_rounds": [0]}] * 2

    resumed = callbacks()
    fit(tmp_path, resumed, ckpt_path=str(checkpoints / "last.ckpt"))
    assert resumed[1].saved_rounds == resumed[2].saved_rounds == list(range(ROUNDS + 1))
    for folder in ("a", "b"):
        assert Portfolio.open(tmp_path / folder).names == [f"round-{r:02d}" for r in range(ROUNDS + 1)]


def test_a_checkpoint_of_an_earlier_version_restores_its_compaction_state(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"

    def callbacks(*extra: Callback) -> list[Callback]:
        return [imp(), Compaction(tmp_path / "portfolio", example_input_shape=SHAPE, keep="all"), *extra,
                ModelCheckpoint(dirpath=checkpoints, save_last=True)]

    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path, callbacks(Kill(at_round=1)))
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
    states = saved["callbacks"]
    [key] = [k for k in states if k.startswith("Compaction")]
    states["Compaction"] = states.pop(key)  # earlier versions keyed the state by the class name alone
    torch.save(saved, checkpoints / "earlier.ckpt")
    restored: list[list[int]] = []

    class Seen(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            restored.append(list(trainer.callbacks[1].saved_rounds))

    resumed = callbacks(Seen())
    fit(tmp_path, resumed, ckpt_path=str(checkpoints / "earlier.ckpt"))
    assert restored == [[0]]
    assert resumed[1].saved_rounds == list(range(ROUNDS + 1))


# ---------------------------------------------------------------- without a Trainer: rank logic, RNG, state


class FakeStrategy:
    """Records the collective calls; ``from_rank_zero`` is what rank 0 broadcasts (for ranks > 0)."""

    def __init__(self, rank: int, from_rank_zero: Any = None) -> None:
        self.rank, self.from_rank_zero, self.broadcasts = rank, from_rank_zero, []

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        self.broadcasts.append(obj)
        return obj if self.rank == 0 else self.from_rank_zero


def fake_trainer(rank: int, from_rank_zero: Any = None) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=rank == 0, strategy=FakeStrategy(rank, from_rank_zero), loggers=[], global_step=0)


def record(round: int) -> RoundRecord:
    return RoundRecord(round=round, density=1.0, target_density=1.0, epoch=round, global_step=0)


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def ready(tmp_path: Path, **kwargs: Any) -> Compaction:
    callback = Compaction(tmp_path / "portfolio", example_input_shape=SHAPE, **kwargs)
    callback._input_shape = SHAPE  # what setup() finds, and the portfolio it creates
    Portfolio.create(tmp_path / "portfolio", input_shape=SHAPE)
    return callback


def test_only_rank_zero_writes_and_every_rank_waits_for_it(tmp_path: Path) -> None:
    other = Compaction(tmp_path / "portfolio", example_input_shape=SHAPE, evaluate=False)
    trainer = fake_trainer(rank=1)
    other.on_pruning_round_end(trainer, Tiny(), record(0))
    assert not (tmp_path / "portfolio").exists()
    assert trainer.strategy.broadcasts == [None]  # joined rank 0's broadcast: in step, nothing to report
    assert other.saved_rounds == [0]  # the same state on every rank

    zero, trainer = ready(tmp_path, evaluate=False), fake_trainer(rank=0)
    zero.on_pruning_round_end(trainer, Tiny(), record(0))
    assert trainer.strategy.broadcasts == [None]
    assert zero.saved_rounds == [0] and Portfolio.open(tmp_path / "portfolio").names == ["round-00"]
    assert other.portfolio.names == ["round-00"]  # other ranks read it from disk


def test_a_failure_on_rank_zero_stops_every_rank(tmp_path: Path, monkeypatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise ValueError("cannot trace this model")

    monkeypatch.setattr(compaction_module, "add_variant", fail)
    zero, trainer = ready(tmp_path, evaluate=False), fake_trainer(rank=0)
    with pytest.raises(ValueError, match="cannot trace this model"):
        zero.on_pruning_round_end(trainer, Tiny(), record(0))
    assert trainer.strategy.broadcasts == ["ValueError: cannot trace this model"]

    other = Compaction(tmp_path / "portfolio", example_input_shape=SHAPE, evaluate=False)
    with pytest.raises(RuntimeError, match="rank 0 could not save the variant round-00: ValueError: cannot trace"):
        other.on_pruning_round_end(fake_trainer(rank=1, from_rank_zero="ValueError: cannot trace this model"), Tiny(), record(0))
    assert zero.saved_rounds == other.saved_rounds == []


def test_a_saved_round_is_not_redone_and_a_lost_one_is(tmp_path: Path, monkeypatch) -> None:
    callback, calls = ready(tmp_path, evaluate=False, keep="all"), []
    real_add_variant = compaction_module.add_variant
    monkeypatch.setattr(compaction_module, "add_variant", lambda *a, **k: calls.append(k["name"]) or real_add_variant(*a, **k))
    callback.on_pruning_round_end(fake_trainer(0), Tiny(), record(0))
    callback.on_pruning_round_end(fake_trainer(0), Tiny(), record(0))  # e.g. replayed after a resume
    assert calls == ["round-00"]
    callback.load_state_dict({"saved_rounds": [0, 1]})  # a checkpoint says round 1 was saved, but it is not listed
    callback.on_pruning_round_end(fake_trainer(0), Tiny(), record(1))
    assert calls == ["round-00", "round-01"] and callback.saved_rounds == [0, 1]
    assert Portfolio.open(tmp_path / "portfolio").names == ["round-00", "round-01"]


def test_what_other_callbacks_add_between_rounds_is_kept(tmp_path: Path) -> None:
    callback = ready(tmp_path, evaluate=False, keep="all")
    callback.on_pruning_round_end(fake_trainer(0), Tiny(), record(0))
    Portfolio.open(tmp_path / "portfolio").update_variant("round-00", host={"fp32": {"p50_ms": 0.1}})  # e.g. export
    callback.on_pruning_round_end(fake_trainer(0), Tiny(), record(1))
    portfolio = Portfolio.open(tmp_path / "portfolio")
    assert portfolio.names == ["round-00", "round-01"]
    assert portfolio["round-00"].host == {"fp32": {"p50_ms": 0.1}}
    assert callback.portfolio["round-00"].host == {"fp32": {"p50_ms": 0.1}}


def test_random_streams_and_the_model_are_left_as_they_were(tmp_path: Path, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    shuffling = DataLoader(data, batch_size=8, shuffle=True)  # iterating it draws from torch's global RNG
    monkeypatch.setattr(compaction_module, "val_data_source", lambda trainer: SimpleNamespace(dataloader=lambda: [shuffling]))
    callback, model = ready(tmp_path), Tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()

    callback.on_pruning_round_end(fake_trainer(0), model, record(0))

    assert random.getstate() == states[0]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), states[1]))
    assert torch.equal(torch.get_rng_state(), states[2])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    variant = Portfolio.open(tmp_path / "portfolio")["round-00"]
    assert variant.metrics["val_acc_sparse"] == pytest.approx(evaluate_accuracy(model.eval(), shuffling))


class RecordingLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((metrics, step))


def test_custom_batches_are_unpacked_and_numbers_logged(tmp_path: Path, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(8, 1, 8, 8, generator=g), "label": torch.randint(0, 10, (8,), generator=g)}]
    monkeypatch.setattr(compaction_module, "val_data_source", lambda trainer: SimpleNamespace(dataloader=lambda: [batches]))
    callback = ready(tmp_path, unpack_batch=lambda b: (b["image"], b["label"]))
    trainer, logger = fake_trainer(0), RecordingLogger()
    trainer.loggers, trainer.global_step = [logger], 42
    callback.on_pruning_round_end(trainer, Tiny(), record(0))

    variant = Portfolio.open(tmp_path / "portfolio")["round-00"]
    expected = evaluate_accuracy(Tiny().eval(), [(b["image"], b["label"]) for b in batches])
    assert variant.metrics["val_acc_sparse"] == pytest.approx(expected)
    numbers = {"params": variant.params, "macs": variant.macs, "exactness_error": variant.exactness_error, **variant.metrics}
    assert logger.logged == [({f"compaction/{key}": value for key, value in numbers.items()}, 42)]
    assert set(numbers) == {"params", "macs", "exactness_error", "val_acc_sparse", "val_acc_compacted"}


def test_state_dict_round_trip_and_foreign_state(tmp_path: Path) -> None:
    callback = Compaction(tmp_path, example_input_shape=SHAPE)
    callback.load_state_dict({"saved_rounds": [0, 1, 2]})
    assert callback.state_dict() == {"saved_rounds": [0, 1, 2]}
    with pytest.raises(MisconfigurationException, match="no list of saved rounds.*not written by this callback"):
        callback.load_state_dict({"rounds": 3})


# ---------------------------------------------------------------- configuration errors, raised at setup


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"example_input_shape": (1, 0, 8)}, r"example_input_shape must be positive integers.*got \(1, 0, 8\)"),
        ({"example_input_shape": ()}, "example_input_shape must be positive integers"),
        ({"input_dtype": "float33"}, "'float33' is not a torch dtype name"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        Compaction(tmp_path, **kwargs)


def test_without_imp_the_error_points_to_add_variant(tmp_path: Path, make_trainer, digits: DigitsDataModule) -> None:
    trainer = make_trainer(max_epochs=1, callbacks=[Compaction(tmp_path / "p", example_input_shape=SHAPE)])
    with pytest.raises(MisconfigurationException, match="no IterativeMagnitudePruning callback.*variants.add_variant"):
        trainer.fit(DigitsResNet(width=4), datamodule=digits)
    assert not (tmp_path / "p").exists()


def test_without_an_input_shape_the_error_says_how_to_give_one(tmp_path: Path, make_trainer, digits) -> None:
    trainer = make_trainer(max_epochs=ROUNDS + 1, callbacks=[imp(), Compaction(tmp_path / "p")])
    with pytest.raises(MisconfigurationException, match=r"example_input_shape=\(1, C, H, W\).*DigitsResNet.example_input_array"):
        trainer.fit(DigitsResNet(width=4), datamodule=digits)


def test_the_input_shape_comes_from_example_input_array(tmp_path: Path, make_trainer) -> None:
    module = DigitsResNet(width=4)
    module.example_input_array = torch.zeros(2, 1, 8, 8)
    callback = Compaction(tmp_path / "p", evaluate=False)
    callback.setup(make_trainer(callbacks=[imp(), callback]), module, "fit")
    assert Portfolio.open(tmp_path / "p").input_shape == (2, 1, 8, 8)


def test_evaluate_without_validation_data_is_rejected(tmp_path: Path, make_trainer, digits) -> None:
    trainer = make_trainer(max_epochs=ROUNDS + 1, callbacks=[imp(), Compaction(tmp_path / "p", example_input_shape=SHAPE)])
    with pytest.raises(MisconfigurationException, match="there is none.*Compaction\\(evaluate=False\\)"):
        trainer.fit(DigitsResNet(width=4), train_dataloaders=digits.train_dataloader())


def test_evaluate_with_an_empty_list_of_validation_loaders_is_rejected(tmp_path: Path, make_trainer, digits) -> None:
    trainer = make_trainer(max_epochs=ROUNDS + 1, callbacks=[imp(), Compaction(tmp_path / "p", example_input_shape=SHAPE)])
    with pytest.raises(MisconfigurationException, match="an empty collection.*Compaction\\(evaluate=False\\)"):
        trainer.fit(DigitsResNet(width=4), train_dataloaders=digits.train_dataloader(), val_dataloaders=[])
    assert not (tmp_path / "p").exists()  # nothing was saved: the portfolio folder goes again


def test_a_portfolio_for_another_input_is_rejected(tmp_path: Path, make_trainer, digits) -> None:
    Portfolio.create(tmp_path / "p", input_shape=(1, 3, 32, 32))
    trainer = make_trainer(max_epochs=ROUNDS + 1, callbacks=[imp(), Compaction(tmp_path / "p", example_input_shape=SHAPE)])
    with pytest.raises(MisconfigurationException, match=r"already holds a portfolio for input \[1, 3, 32, 32\]"):
        trainer.fit(DigitsResNet(width=4), datamodule=digits)


def test_a_fit_that_fails_before_saving_leaves_no_portfolio(tmp_path: Path, make_trainer, digits) -> None:
    late = IterativeMagnitudePruning(rounds=1, epochs_per_round=1, rewind_step=1000)  # fails at on_train_start

    def fails(portfolio_dir: Path) -> None:
        trainer = make_trainer(max_epochs=2, callbacks=[late, Compaction(portfolio_dir, example_input_shape=SHAPE)])
        with pytest.raises(MisconfigurationException, match="rewind_step=1000 lies beyond round 0"):
            trainer.fit(DigitsResNet(width=4), datamodule=digits)

    fails(tmp_path / "runs" / "a" / "portfolio")
    assert list(tmp_path.iterdir()) == []  # every folder it created is gone again
    (tmp_path / "mine").mkdir()
    fails(tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []  # the user's folder stays
    kept = ready(tmp_path / "kept")
    kept_manifest = (tmp_path / "kept" / "portfolio" / "manifest.json").read_bytes()
    fails(kept.portfolio_dir)
    assert (kept.portfolio_dir / "manifest.json").read_bytes() == kept_manifest  # an existing portfolio stays


def test_a_new_fit_into_a_filled_portfolio_says_what_it_replaces(run: SimpleNamespace, tmp_path: Path) -> None:
    copy = tmp_path / "portfolio"
    shutil.copytree(run.root / "portfolio", copy)
    with pytest.warns(UserWarning, match=r"already holds variants \['round-00', 'round-01', 'round-02'\]"):
        fit(tmp_path, [imp(), Compaction(copy, example_input_shape=SHAPE)])


def test_the_default_keeps_no_dominated_round_and_lists_the_others(tmp_path: Path) -> None:
    pruning, compaction = imp(), Compaction(tmp_path / "portfolio", example_input_shape=SHAPE)
    fit(tmp_path, [pruning, compaction])
    portfolio = Portfolio.open(tmp_path / "portfolio")
    kept, skipped = portfolio.variants, portfolio.skipped
    assert skipped, "rounds 0 and 1 have the same compacted size: one of them is not kept"
    assert sorted([*portfolio.names, *(s.variant.name for s in skipped)]) == [f"round-{r:02d}" for r in range(ROUNDS + 1)]
    for a in kept:  # keep="pareto": no kept variant is beaten by another on accuracy with no more params and MACs
        for b in kept:
            full_size = a.params == a.compaction["params_before"]
            if a is not b and not full_size:
                assert not (b.accuracy >= a.accuracy and b.params <= a.params and b.macs <= a.macs), (a.name, b.name)
    assert len({v.params for v in kept}) == len(kept)  # no two of the same size
    for entry in skipped:  # measured, explained, and nothing left on disk
        assert entry.reason.split()[0] in {v.name for v in kept} | {s.variant.name for s in skipped}
        assert "val_acc_compacted" in entry.variant.metrics and not (tmp_path / "portfolio" / entry.variant.name).exists()
    assert compaction.saved_rounds == list(range(ROUNDS + 1))
