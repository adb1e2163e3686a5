"""The ``Compaction`` callback: every pruning round's sparse model becomes a portfolio variant."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_shifter._lightning import (
    Callback,
    MisconfigurationException,
    adopt_class_keyed_state,
    on_rank_zero,
    val_data_source,
)
from lightning_shifter.batches import default_unpack, example_input, first_loader
from lightning_shifter.imp import IterativeMagnitudePruning
from lightning_shifter.portfolio import KEEP_POLICIES, MANIFEST_NAME, Portfolio, PortfolioError
from lightning_shifter.variants import add_variant, variant_name


class Compaction(Callback):
    r"""Compact the sparse model at the end of every pruning round and save it into a portfolio.

    Works with :class:`~lightning_shifter.imp.IterativeMagnitudePruning`, which tells it when a
    round ends. For each round ``r`` it compacts a copy of the sparse model (exactly: same outputs,
    fewer channels), measures the sparse and the compacted model's accuracy on the validation data
    the Trainer already has, exports the compacted model with ``torch.export`` and saves it as the
    variant ``round-<r>`` of the portfolio in ``portfolio_dir`` (``<variant>/model.pt2`` plus its
    entry in ``manifest.json``). The training run itself is left exactly as it would be without
    this callback: its parameters, modes and random streams are not touched.

    Only rank 0 writes; every rank waits for it at each round end, and all ranks stop with its
    error if it fails. A resumed run replaces a variant it saves again instead of listing it twice.
    A fit that fails before the first variant is saved leaves no portfolio folder behind (it is
    created at setup, so that an unwritable folder fails before training).

    To compact a model without training, call :func:`lightning_shifter.variants.add_variant`.

    Args:
        portfolio_dir: the portfolio folder (created if missing; an existing portfolio for the same
            input is added to).
        example_input_shape: the input shape the variants are exported for, batch included, e.g.
            ``(1, 3, 32, 32)``; by default the shape of ``pl_module.example_input_array``.
        input_dtype: dtype of that input.
        evaluate: measure ``val_acc_sparse`` and ``val_acc_compacted`` (top-1 accuracy of class
            logits) on the validation data. The full validation set of the datamodule, the module
            or ``fit(val_dataloaders=...)`` is used (the first loader if there are several).
        unpack_batch: batch -> ``(inputs, targets)``; by default ``(batch[0], batch[1])``.
        keep: which rounds become variants (:func:`~lightning_shifter.portfolio.keep_decision`).
            ``"pareto"`` (default): the accuracy / size Pareto front, plus the most accurate full-size
            round as the reference: IMP makes many rounds that are no smaller or no better than
            another, and they would only be copies. ``"distinct"``: one variant per compacted size,
            the most accurate. ``"all"``: every round. A round not kept (or replaced later) is listed
            with the reason in the manifest's ``skipped`` entries, and nothing of it stays on disk.

    Example::

        import lightning.pytorch as pl
        from lightning_shifter.callbacks.compaction import Compaction
        from lightning_shifter.demo import DigitsDataModule, DigitsResNet
        from lightning_shifter.imp import IterativeMagnitudePruning

        compaction = Compaction("portfolio/", example_input_shape=(1, 1, 8, 8))
        trainer = pl.Trainer(max_epochs=3, callbacks=[
            IterativeMagnitudePruning(rounds=2, epochs_per_round=1, rewind_step=5), compaction])
        trainer.fit(DigitsResNet(), datamodule=DigitsDataModule())
        print([v.name for v in compaction.portfolio.pareto_front()])
    """

    def __init__(
        self,
        portfolio_dir: str | os.PathLike,
        example_input_shape: Sequence[int] | None = None,
        input_dtype: str = "float32",
        evaluate: bool = True,
        unpack_batch: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
        keep: str = "pareto",
    ) -> None:
        if example_input_shape is not None:
            example_input_shape = tuple(example_input_shape)
            if not example_input_shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in example_input_shape
            ):
                raise MisconfigurationException(
                    f"example_input_shape must be positive integers, batch first, e.g. (1, 3, 32, 32); "
                    f"got {example_input_shape!r}"
                )
        if not isinstance(getattr(torch, str(input_dtype), None), torch.dtype):
            raise MisconfigurationException(f"input_dtype {input_dtype!r} is not a torch dtype name such as 'float32'")
        if keep not in KEEP_POLICIES:
            raise MisconfigurationException(f"keep={keep!r} is not a keep policy; use one of {KEEP_POLICIES}")
        self.portfolio_dir = Path(portfolio_dir)
        self.keep = keep
        self.example_input_shape = example_input_shape
        self.input_dtype = input_dtype
        self.evaluate = evaluate
        self.unpack_batch = unpack_batch or default_unpack
        self.saved_rounds: list[int] = []
        self._input_shape: tuple[int, ...] | None = None
        self._created: list[Path] | None = None  # manifest and folders this fit created, if it did
        self._found: list[str] = []  # variants the portfolio held before this fit

    @property
    def portfolio(self) -> Portfolio:
        """The portfolio as it is on disk now, with what later callbacks (e.g. ExecuTorchExport) added."""
        return Portfolio.open(self.portfolio_dir, verify=False)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not any(isinstance(cb, IterativeMagnitudePruning) for cb in trainer.callbacks):
            raise MisconfigurationException(
                "Compaction saves a variant at the end of every round of IterativeMagnitudePruning, but "
                "no IterativeMagnitudePruning callback is in the Trainer: add one, or compact a model you "
                "already have without training with lightning_shifter.variants.add_variant(portfolio, model, "
                "example_inputs, name=..., round=...)"
            )
        self._input_shape = self.example_input_shape or self._shape_from_module(pl_module)
        if self.evaluate and not val_data_source(trainer).is_defined():
            raise MisconfigurationException(
                "Compaction(evaluate=True) measures accuracy on the validation data, but there is none: "
                "define val_dataloader() in the datamodule or module, pass val_dataloaders to fit, or "
                "use Compaction(evaluate=False)"
            )
        if trainer.is_global_zero:
            manifest = self.portfolio_dir / MANIFEST_NAME
            created = None if manifest.exists() else [manifest, *(
                folder for folder in (self.portfolio_dir, *self.portfolio_dir.parents) if not folder.exists())]
            try:
                portfolio = Portfolio.create(self.portfolio_dir, self._input_shape, self.input_dtype)
            except PortfolioError as err:
                raise MisconfigurationException(str(err)) from err
            self._created, self._found = created, portfolio.names

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in setup: Lightning restores a checkpoint (and sets trainer.ckpt_path) after setup.
        if trainer.is_global_zero and self._found and trainer.ckpt_path is None:
            rank_zero_warn(
                f"{self.portfolio_dir} already holds variants {self._found}; those this run "
                "saves again (same round) are replaced, the others stay"
            )

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        created, self._created = self._created, None
        if not created:
            return
        manifest, *folders = created
        try:
            if len(Portfolio.open(self.portfolio_dir, verify=False)):
                return  # a variant was saved: the portfolio stays
            manifest.unlink()
            for folder in folders:  # deepest first; only empty ones go, so nothing else is lost
                folder.rmdir()
        except (OSError, PortfolioError):
            pass  # best effort: the fit's own error is the one to report

    def on_pruning_round_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: Any) -> None:
        name = variant_name(record.round)

        def save() -> None:
            # read afresh: other callbacks may have updated the manifest since the last round
            portfolio = Portfolio.open(self.portfolio_dir, verify=False)
            handled = name in portfolio or any(s.variant.name == name for s in portfolio.skipped)
            if not (record.round in self.saved_rounds and handled):
                with _untouched_rng(pl_module.device):
                    self._save(trainer, pl_module, portfolio, record, name)

        on_rank_zero(trainer, save, f"save the variant {name}")  # every rank goes on, or all stop
        if record.round not in self.saved_rounds:
            self.saved_rounds.append(record.round)
        self._created = None  # the portfolio holds a variant now: it stays, whatever happens next

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, portfolio: Portfolio, record: Any,
              name: str) -> None:
        example = example_input(self._input_shape, self.input_dtype, seed=record.round)
        val_data = first_loader(val_data_source(trainer).dataloader()) if self.evaluate else None
        if self.evaluate and val_data is None:
            raise MisconfigurationException(
                "Compaction(evaluate=True) measures accuracy on the validation data, but the validation "
                "dataloaders are an empty collection: return a loader from val_dataloader(), or use "
                "Compaction(evaluate=False)"
            )
        variant = add_variant(
            portfolio, pl_module, example, name=name, round=record.round, density=record.density,
            val_data=val_data, unpack=self.unpack_batch, keep=self.keep,
        )
        numbers = {"params": variant.params, "macs": variant.macs, "exactness_error": variant.exactness_error}
        numbers.update(variant.metrics)
        for logger in trainer.loggers:
            logger.log_metrics({f"compaction/{k}": v for k, v in numbers.items()}, step=trainer.global_step)
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in variant.metrics.items())
        if name not in portfolio:
            reason = next(s.reason for s in portfolio.skipped if s.variant.name == name)
            rank_zero_info(f"Compaction: {name} not kept (keep={self.keep!r}): {reason}")
            return
        rank_zero_info(
            f"Compaction: saved {name} (density {variant.density:.4f}, params "
            f"{variant.compaction.get('params_before', '?')} -> {variant.params}, MACs {variant.macs}"
            f"{', ' + accuracy if accuracy else ''}, max error {variant.exactness_error:.2e}) to {self.portfolio_dir}"
        )

    def _shape_from_module(self, pl_module: pl.LightningModule) -> tuple[int, ...]:
        example = pl_module.example_input_array
        if not isinstance(example, torch.Tensor):
            raise MisconfigurationException(
                "Compaction needs the input shape to export variants for: pass "
                "Compaction(example_input_shape=(1, C, H, W)) or set a single tensor as "
                f"{type(pl_module).__name__}.example_input_array (it is {type(example).__name__})"
            )
        return tuple(example.shape)

    @property
    def state_key(self) -> str:
        # one state per portfolio folder: several Compaction callbacks (into different folders) in one
        # Trainer keep theirs apart in a checkpoint
        return self._generate_state_key(portfolio_dir=str(self.portfolio_dir))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        adopt_class_keyed_state(self, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_rounds": list(self.saved_rounds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rounds = state_dict.get("saved_rounds")
        if not isinstance(rounds, list) or not all(isinstance(r, int) for r in rounds):
            raise MisconfigurationException(
                f"the checkpoint's Compaction state {state_dict!r} has no list of saved rounds: it was not "
                "written by this callback; resume from a checkpoint of a run that used Compaction"
            )
        self.saved_rounds = list(rounds)


@contextmanager
def _untouched_rng(device: torch.device) -> Iterator[None]:
    """Run a block without advancing the random streams the training run draws from."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        # only the model's own accelerator: forking every visible device would initialise them all
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
