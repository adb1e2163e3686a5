"""The demo: a small residual CNN on scikit-learn's bundled digits, trained with IMP and compacted.

Everything here is what a user would write anyway: a DataModule, a plain LightningModule and a
Trainer with the shifter callbacks. Tests and later pipeline stages reuse :class:`DigitsDataModule`
and :class:`DigitsResNet`; :func:`build_callbacks` is the one place where the demo's callbacks are
assembled. The rest of the demo (export, benchmarks, switching, report) is driven by
``lightning-shifter demo`` (:mod:`lightning_shifter.cli`) from the functions at the end of this file.

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
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_shifter.callbacks.compaction import Compaction
from lightning_shifter.imp import IterativeMagnitudePruning, RoundRecord

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
    """scikit-learn's 1,797 real 8x8 handwritten digits as ``(1, image_size, image_size)`` float tensors.

    Pixels are scaled by the training split's mean and standard deviation; the train/validation
    split is a fixed permutation of ``seed``. ``image_size`` other than 8 resizes the images
    (bilinear) once, at setup, so that models see a realistic resolution. Nothing is downloaded: the
    data ships with scikit-learn.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0, image_size: int = 8) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.image_size = image_size
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
        if self.image_size != images.shape[-1]:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
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


class DigitsClassifier(pl.LightningModule):
    """What the demo's models share, written as a plain LightningModule: cross-entropy training,
    ``val_loss`` / ``val_acc`` logging, SGD with momentum and a cosine LR schedule over
    ``schedule_epochs`` epochs (with IMP, set it to ``epochs_per_round``: every round rewinds it).
    Subclasses build the layers and ``forward``."""

    def __init__(self, lr: float, momentum: float, weight_decay: float, schedule_epochs: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

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


class DigitsResNet(DigitsClassifier):
    """A small residual CNN for 8x8 digits.

    conv-bn-relu stem (``width`` channels), a basic block at ``width`` and one at ``2 * width`` with
    stride 2, global average pooling, a linear classifier.
    """

    def __init__(self, width: int = 16, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
                 schedule_epochs: int = 2) -> None:
        super().__init__(lr, momentum, weight_decay, schedule_epochs)
        self.save_hyperparameters()
        self.stem = nn.Sequential(*_conv_bn(1, width, 3), nn.ReLU())
        self.block1 = BasicBlock(width, width)
        self.block2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DigitsVGG(DigitsClassifier):
    """A VGG-style CNN, over-parameterized for digits (as VGG-16 is for CIFAR-10): the demo's model.

    conv-bn-relu at ``width``, ``width``, 2x2 max pooling, ``2 * width``, ``2 * width``, pooling,
    ``4 * width``; global average pooling and a linear classifier. Any input size of 4x4 or more.
    """

    def __init__(self, width: int = 64, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
                 schedule_epochs: int = 2) -> None:
        super().__init__(lr, momentum, weight_decay, schedule_epochs)
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        channels = 1
        for out in (width, width, "pool", 2 * width, 2 * width, "pool", 4 * width):
            if out == "pool":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*_conv_bn(channels, out, 3), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


MODELS: dict[str, type[DigitsClassifier]] = {"vgg": DigitsVGG, "resnet": DigitsResNet}


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
