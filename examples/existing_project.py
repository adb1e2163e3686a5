"""The smallest change that adds lightning-shifter to an existing Lightning project.

Below is an ordinary project: a LightningModule, a DataModule and a Trainer. The lines marked
``# + shifter`` are the whole diff: one import, the input shape for export, three callbacks and
``max_epochs`` from the pruning schedule. The model, the data and the training loop stay untouched,
its learning-rate schedule included: sized from ``trainer.estimated_stepping_batches``, it spans
one pruning round, because that is what the Trainer shows while ``configure_optimizers`` runs.
After ``fit``, ``portfolio/`` holds one exact, compacted variant per pruning round with its
ExecuTorch programs, ready for ``lightning-shifter report portfolio/`` or a phone.

The project may import Lightning either way: ``lightning.pytorch`` or the standalone
``pytorch_lightning`` (same API, distinct classes: take the module, the data module, the Trainer and
its callbacks from the same one). The callbacks work with both::

    python examples/existing_project.py --out runs/existing
    LIGHTNING_PACKAGE=pytorch_lightning python examples/existing_project.py --out runs/existing-pl
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

if os.environ.get("LIGHTNING_PACKAGE") == "pytorch_lightning":
    import pytorch_lightning as pl  # a project on the standalone package ...
else:
    import lightning.pytorch as pl  # ... or on the unified `lightning` one: the same code either way

from lightning_shifter import Compaction, ExecuTorchExport, IterativeMagnitudePruning  # + shifter


class LitClassifier(pl.LightningModule):
    """The project's model: a small MLP on 16 features (any LightningModule works the same way)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        # as Lightning's docs size it: with IterativeMagnitudePruning this is one round's steps
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class SyntheticData(pl.LightningDataModule):
    """The project's data: four Gaussian clusters in 16 dimensions."""

    def __init__(self, samples: int = 2048, batch_size: int = 64) -> None:
        super().__init__()
        self.samples, self.batch_size = samples, batch_size

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        centers = torch.randn(4, 16, generator=generator) * 2
        y = torch.randint(0, 4, (self.samples,), generator=generator)
        x = centers[y] + torch.randn(self.samples, 16, generator=generator)
        split = self.samples * 4 // 5
        self.train_set, self.val_set = TensorDataset(x[:split], y[:split]), TensorDataset(x[split:], y[split:])

    def train_dataloader(self):
        return DataLoader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, 256)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description="An existing Lightning project, with lightning-shifter added.")
    parser.add_argument("--out", type=Path, default=Path("runs/existing"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs-per-round", type=int, default=3)
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    imp = IterativeMagnitudePruning(rounds=args.rounds, epochs_per_round=args.epochs_per_round, rewind_step=20)  # + shifter
    trainer = pl.Trainer(
        max_epochs=imp.epochs_needed,  # + shifter (was: max_epochs=...)
        default_root_dir=args.out,
        callbacks=[
            imp,  # + shifter
            Compaction(args.out / "portfolio", example_input_shape=(1, 16)),  # + shifter
            ExecuTorchExport(precisions=("fp32", "int8")),  # + shifter
        ],
    )
    trainer.fit(LitClassifier(), datamodule=SyntheticData())
    return trainer


if __name__ == "__main__":
    main()
