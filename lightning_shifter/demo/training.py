"""The demo's training run: IMP with rewinding, exact compaction of every round, the original rule beside it.

:func:`build_callbacks` is the one place where the demo's callbacks are assembled; :func:`run_demo`
trains with them; :func:`headline_summary` and :func:`original_rule_notes` put the result next to the
original DNNShifter rule on the same masks. ``lightning-shifter demo`` (:mod:`lightning_shifter.demo.pipeline`)
goes on from there: export, benchmarks, switching sessions, report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_shifter.callbacks.compaction import Compaction
from lightning_shifter.demo.data import DigitsDataModule
from lightning_shifter.demo.models import MODELS
from lightning_shifter.imp import IterativeMagnitudePruning, RoundRecord


class OriginalRule(Callback):
    """A round-end listener that applies the original DNNShifter rule to each round's sparse model.

    Per round it records, with batch-norms fused into the convolutions as the original counts them,
    the parameters of the dense model, of our exact compaction and of the original rule's
    (:func:`~lightning_shifter.compaction.original.compact_original`), and the original rule's
    largest output error on a fixed random batch: the side-by-side comparison the demo reports.
    """

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)
        self.rounds: dict[int, dict[str, float]] = {}

    def on_pruning_round_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: RoundRecord) -> None:
        from torch.fx.experimental.optimization import fuse

        from lightning_shifter.compaction import compact, materialized_copy
        from lightning_shifter.compaction.original import compact_original

        sparse = materialized_copy(pl_module).cpu().eval()
        x = torch.randn((8, *self.input_shape[1:]), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            original = compact_original(sparse, x[:1])
            ours = compact(sparse, x[:1]).module
            error = float((original(x) - sparse(x)).abs().max())

        def fused_params(module: nn.Module) -> int:
            return sum(p.numel() for p in fuse(module, inplace=False).parameters())

        dense = fused_params(sparse) if record.round == 0 else self.rounds[0]["dense"]
        self.rounds[record.round] = {"dense": dense, "ours": fused_params(ours),
                                     "original": sum(p.numel() for p in original.parameters()),
                                     "original_max_error": error}

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": {str(k): v for k, v in self.rounds.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rounds = {int(k): dict(v) for k, v in state_dict["rounds"].items()}


def build_callbacks(out_dir: Path, rounds: int, epochs_per_round: int, rewind_step: int,
                    final_density: float, criterion: Any, input_shape: Sequence[int],
                    keep: str = "pareto") -> list[Callback]:
    """The demo's callbacks, in one place: IMP, exact compaction of every round into
    ``out_dir/portfolio``, the original rule on the same masks, and a resumable checkpoint."""
    return [
        IterativeMagnitudePruning(rounds=rounds, epochs_per_round=epochs_per_round, rewind_step=rewind_step,
                                  final_density=final_density, criterion=criterion),
        Compaction(out_dir / "portfolio", example_input_shape=tuple(input_shape), keep=keep),
        OriginalRule(input_shape),
        # save_top_k=1 (the default) writes every epoch, so last.ckpt exists to resume from after a kill
        ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True),
    ]


def run_demo(
    out_dir: str | os.PathLike,
    model: str = "vgg",
    width: int = 128,
    image_size: int = 20,
    rounds: int = 10,
    final_density: float = 0.02,
    epochs_per_round: int = 2,
    rewind_step: int = 20,
    alpha: float = 3.0,
    keep: str = "pareto",
    seed: int = 0,
    extra_callbacks: Sequence[Callback] = (),
    progress_bar: bool = True,
) -> tuple[list[RoundRecord], dict[int, dict[str, float]]]:
    """Train a digits model with IMP, compact every round, print the per-round table.

    ``model`` is ``"vgg"`` (:class:`DigitsVGG`) or ``"resnet"`` (:class:`DigitsResNet`), at
    ``width`` channels, on digits resized to ``image_size``; ``alpha`` > 0 prunes with
    :class:`~lightning_shifter.criteria.ChannelAwareMagnitude` (0: plain magnitude, DNNShifter's).
    Writes the portfolio (``portfolio/``: ``manifest.json`` and a ``model.pt2`` per kept round), the
    CSV logs, ``imp_rounds.json`` and a resumable ``checkpoints/last.ckpt`` under ``out_dir``;
    returns the IMP round records and the original rule's figures per round (:class:`OriginalRule`).
    """
    from lightning_shifter.criteria import ChannelAwareMagnitude, magnitude

    if model not in MODELS:
        raise ValueError(f"unknown demo model {model!r}; use one of {sorted(MODELS)}")
    out_dir = Path(out_dir)
    pl.seed_everything(seed, verbose=False)
    input_shape = (1, 1, image_size, image_size)
    criterion = ChannelAwareMagnitude(alpha=alpha) if alpha > 0 else magnitude
    callbacks = [*build_callbacks(out_dir, rounds, epochs_per_round, rewind_step, final_density, criterion,
                                  input_shape, keep), *extra_callbacks]
    if progress_bar:
        callbacks.append(RichProgressBar())
    imp = next(c for c in callbacks if isinstance(c, IterativeMagnitudePruning))
    trainer = pl.Trainer(
        max_epochs=imp.epochs_needed,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        callbacks=callbacks,
        logger=CSVLogger(out_dir, name="logs"),
        default_root_dir=out_dir,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    module = MODELS[model](width=width, schedule_epochs=epochs_per_round)
    trainer.fit(module, datamodule=DigitsDataModule(seed=seed, image_size=image_size))
    original = next(c for c in callbacks if isinstance(c, OriginalRule))
    return imp.records, original.rounds


# ---------------------------------------------------------------------------------------- after training
def headline_summary(portfolio_dir: str | os.PathLike, original: dict[int, dict[str, float]]) -> dict[str, Any] | None:
    """The demo's headline as numbers: :func:`~lightning_shifter.portfolio.headline` of the portfolio
    (smallest variant within 1 accuracy point of the best round, size and host fp32 latency against
    dense), with
    the original DNNShifter rule on the same round's masks (:class:`OriginalRule`) beside it."""
    from lightning_shifter.portfolio import Portfolio, headline

    portfolio = Portfolio.open(portfolio_dir, verify=False)
    found = headline(portfolio)
    if found is None:
        return None
    variant = found.variant

    def fp32_ms(name: str | None) -> float | None:
        return None if name is None else portfolio[name].host.get("fp32", {}).get("p50_ms")

    summary: dict[str, Any] = {
        "variant": variant.name, "round": variant.round, "density": variant.density, "params": variant.params,
        "dense_params": found.dense_params, "size_ratio": found.size_ratio, "macs_ratio": found.macs_ratio,
        "ms": fp32_ms(variant.name), "dense_ms": fp32_ms(found.dense_program), "dense_program": found.dense_program,
        "latency_ratio": found.latency_ratio, "accuracy": variant.accuracy, "dense_accuracy": found.dense_accuracy,
        "best_accuracy": found.best_accuracy,
        "exactness_error": variant.exactness_error,
    }
    rule = original.get(variant.round)
    if rule is not None:
        summary.update(original_size_ratio=rule["dense"] / rule["original"], ours_fused_size_ratio=rule["dense"] / rule["ours"],
                       original_max_error=rule["original_max_error"])
    return summary


def original_rule_notes(portfolio_dir: str | os.PathLike, original: dict[int, dict[str, float]]) -> list[str]:
    """The report's sentence comparing the headline variant with the original rule on the same masks."""
    summary = headline_summary(portfolio_dir, original)
    if summary is None or "original_size_ratio" not in summary:
        return []
    return [f"The original DNNShifter rule on the same masks (round {summary['round']}) makes the model "
            f"{summary['original_size_ratio']:.2f}x smaller (ours {summary['ours_fused_size_ratio']:.2f}x, both "
            f"counted with batch-norms fused) and changes its outputs by up to {summary['original_max_error']:.1e}; "
            f"ours changes them by at most {summary['exactness_error']:.1e} (exact compaction)."]
