"""The demo: a small residual CNN on scikit-learn's bundled digits, trained with IMP.

Everything here is what a user would write anyway: a DataModule, a plain LightningModule and a
Trainer with callbacks. Tests and later pipeline stages reuse :class:`DigitsDataModule` and
:class:`DigitsResNet`; :func:`build_callbacks` is the one place where the demo's callbacks are
assembled, so later stages (compaction, export) add theirs there.

Example::

    >>> from lightning_shifter.demo import DigitsDataModule, DigitsResNet
    >>> dm = DigitsDataModule()
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), DigitsResNet()(x).shape[-1]
    ((64, 1, 8, 8), 10)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_shifter.imp import IterativeMagnitudePruning, RoundRecord

INPUT_SHAPE = (1, 1, 8, 8)
NUM_CLASSES = 10


class EpochSeededShuffle(Sampler[int]):
    """Shuffles anew each epoch from ``seed + epoch`` (Lightning calls :meth:`set_epoch`).

    The order depends only on the epoch, never on the global RNG, so a run resumed from a checkpoint
    sees exactly the batches an uninterrupted run would.
    """

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 1,797 real 8x8 handwritten digits as ``(1, 8, 8)`` float tensors.

    Pixels are scaled by the training split's mean and standard deviation; the train/validation
    split is a fixed permutation of ``seed``. Nothing is downloaded: the data ships with scikit-learn.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(len(labels) * self.val_fraction))
        val_idx, train_idx = order[:n_val], order[n_val:]
        mean, std = images[train_idx].mean(), images[train_idx].std()
        images = (images - mean) / std
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        sampler = EpochSeededShuffle(len(self.train_set), seed=self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, batch_size=256)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-bn, identity or 1x1 conv-bn shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, out_channels, 3, stride)
        self.conv2, self.bn2 = _conv_bn(out_channels, out_channels, 3)
        self.shortcut = (
            nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DigitsResNet(pl.LightningModule):
    """A small residual CNN for 8x8 digits, written as a plain LightningModule.

    conv-bn-relu stem (``width`` channels), a basic block at ``width`` and one at ``2 * width`` with
    stride 2, global average pooling, a linear classifier. SGD with momentum and a cosine LR
    schedule over ``schedule_epochs`` epochs (with IMP, set it to ``epochs_per_round``: every round
    rewinds the schedule). Logs ``train_loss``, ``val_loss`` and ``val_acc``.
    """

    def __init__(self, width: int = 16, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
                 schedule_epochs: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stem = nn.Sequential(*_conv_bn(1, width, 3), nn.ReLU())
        self.block1 = BasicBlock(width, width)
        self.block2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, NUM_CLASSES)
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.schedule_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def build_callbacks(out_dir: Path, rounds: int, epochs_per_round: int, rewind_step: int) -> list[Callback]:
    """The demo's callbacks, in one place: later pipeline stages append theirs here."""
    return [
        IterativeMagnitudePruning(rounds=rounds, epochs_per_round=epochs_per_round, rewind_step=rewind_step),
        ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0),
    ]


def run_demo(
    out_dir: str | os.PathLike,
    rounds: int = 10,
    epochs_per_round: int = 2,
    rewind_step: int = 10,
    seed: int = 0,
    extra_callbacks: Sequence[Callback] = (),
    progress_bar: bool = True,
) -> list[RoundRecord]:
    """Train ``DigitsResNet`` on digits with IMP, print the per-round table, return the records.

    Writes the CSV logs, ``imp_rounds.json`` and a resumable ``checkpoints/last.ckpt`` under ``out_dir``.
    """
    out_dir = Path(out_dir)
    pl.seed_everything(seed, verbose=False)
    callbacks = [*build_callbacks(out_dir, rounds, epochs_per_round, rewind_step), *extra_callbacks]
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
    trainer.fit(DigitsResNet(schedule_epochs=epochs_per_round), datamodule=DigitsDataModule(seed=seed))
    return imp.records
