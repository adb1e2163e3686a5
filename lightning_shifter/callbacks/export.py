"""The ``ExecuTorchExport`` callback: at the end of fit, lower every portfolio variant to ExecuTorch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from lightning_shifter._lightning import Callback, MisconfigurationException, adopt_class_keyed_state, on_rank_zero
from lightning_shifter.batches import first_loader
from lightning_shifter.export import export_portfolio
from lightning_shifter.portfolio import PRECISIONS


class ExecuTorchExport(Callback):
    r"""Export the portfolio's variants to ExecuTorch programs when ``fit`` ends (rank 0 only).

    Delegates to :func:`lightning_shifter.export.export_portfolio`: every variant's ``model.pt2``
    becomes ``model.pte`` (fp32, XNNPACK) and, with ``"int8"``, ``model_int8.pte`` calibrated on the
    first ``calibration_batches`` training batches. Each program is checked against its PyTorch
    variant (and int8 on the validation data) before it is listed; programs already exported from
    an unchanged ``model.pt2`` are skipped, so resuming is cheap. Other ranks wait for rank 0, and all
    ranks stop with its error if it fails.

    Args:
        precisions: ``"fp32"`` and/or ``"int8"``.
        portfolio_dir: the portfolio to export; by default that of the ``Compaction`` callback of
            the same Trainer (place ``ExecuTorchExport`` after it).
        calibration_batches: training batches to calibrate int8 on.
        validate: record ``val_acc_fp32`` / ``val_acc_int8`` on the Trainer's validation data (the
            first loader; batches are ``(inputs, targets, ...)``).
        workers: processes to export in (see ``bench/export.py`` before raising it).
        int8_max_accuracy_drop, fp32_tolerance, warmup, runs: passed to ``export_portfolio``.

    Example::

        import lightning as L
        from lightning_shifter.callbacks import Compaction, ExecuTorchExport
        from lightning_shifter.demo import DigitsDataModule, DigitsResNet
        from lightning_shifter.imp import IterativeMagnitudePruning

        trainer = L.Trainer(max_epochs=3, callbacks=[
            IterativeMagnitudePruning(rounds=2, epochs_per_round=1),
            Compaction("portfolio/", example_input_shape=(1, 1, 8, 8)),
            ExecuTorchExport(precisions=("fp32", "int8")),
        ])
        trainer.fit(DigitsResNet(), datamodule=DigitsDataModule())
    """

    def __init__(
        self,
        precisions: Sequence[str] = PRECISIONS,
        portfolio_dir: str | os.PathLike | None = None,
        calibration_batches: int = 32,
        validate: bool = True,
        workers: int = 1,
        int8_max_accuracy_drop: float = 0.02,
        fp32_tolerance: float = 1e-4,
        warmup: int = 3,
        runs: int = 20,
    ) -> None:
        precisions = (precisions,) if isinstance(precisions, str) else tuple(precisions)
        if not precisions or any(p not in PRECISIONS for p in precisions):
            raise MisconfigurationException(f"precisions must be values from {PRECISIONS}, got {precisions!r}")
        if not isinstance(calibration_batches, int) or calibration_batches < 1:
            raise MisconfigurationException(f"calibration_batches must be a positive integer, got {calibration_batches!r}")
        if not isinstance(workers, int) or workers < 1:
            raise MisconfigurationException(f"workers must be a positive integer, got {workers!r}")
        self.precisions = precisions
        self.portfolio_dir = None if portfolio_dir is None else Path(portfolio_dir)
        self.calibration_batches = calibration_batches
        self.validate = validate
        self.workers = workers
        self.options = dict(int8_max_accuracy_drop=int8_max_accuracy_drop, fp32_tolerance=fp32_tolerance,
                            warmup=warmup, runs=runs)
        self.last_export: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._portfolio_dir(trainer) is None:
            raise MisconfigurationException(
                "ExecuTorchExport has no portfolio to export: add a Compaction callback before it, or pass "
                "ExecuTorchExport(portfolio_dir=...)"
            )

    def _portfolio_dir(self, trainer: pl.Trainer) -> Path | None:
        if self.portfolio_dir is not None:
            return self.portfolio_dir
        from lightning_shifter.callbacks.compaction import Compaction

        found = [c for c in trainer.callbacks if isinstance(c, Compaction)]
        return found[0].portfolio_dir if found else None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        on_rank_zero(trainer, lambda: self._export(trainer), "export the portfolio")  # all go on, or all stop

    def _export(self, trainer: pl.Trainer) -> None:
        validation = first_loader(trainer.val_dataloaders) if self.validate else None
        calibration = trainer.train_dataloader if "int8" in self.precisions else None
        if calibration is None and "int8" in self.precisions:
            calibration = validation
        report = export_portfolio(
            self._portfolio_dir(trainer), self.precisions, calibration, validation, workers=self.workers,
            calibration_batches=self.calibration_batches, **self.options,
        )
        self.last_export = report.to_json()
        rank_zero_info(
            f"ExecuTorchExport: {len(report.exported)} program(s) exported, {len(report.skipped)} up to date, "
            f"{len(report.failed)} failed, in {report.seconds:.1f} s"
        )

    @property
    def state_key(self) -> str:
        # several exporters in one Trainer (of other portfolios, or precisions) keep their states apart
        return self._generate_state_key(portfolio_dir=None if self.portfolio_dir is None else str(self.portfolio_dir),
                                        precisions=list(self.precisions))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        adopt_class_keyed_state(self, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {"last_export": self.last_export}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "last_export" not in state_dict:
            raise MisconfigurationException(
                f"the checkpoint's ExecuTorchExport state {sorted(state_dict)} was not written by this callback; "
                "resume from a checkpoint of a run that used ExecuTorchExport"
            )
        self.last_export = state_dict["last_export"]
