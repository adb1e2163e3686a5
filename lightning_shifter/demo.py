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

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_shifter.callbacks.compaction import Compaction
from lightning_shifter.device import SwitchReport
from lightning_shifter.imp import IterativeMagnitudePruning, RoundRecord

if TYPE_CHECKING:  # executorch's runtime is imported only where a session runs
    from lightning_shifter.runtime import Option, Switcher

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


def build_callbacks(out_dir: Path, rounds: int, epochs_per_round: int, rewind_step: int,
                    prune_fraction: float = 0.2) -> list[Callback]:
    """The demo's callbacks, in one place: IMP, exact compaction of every round into
    ``out_dir/portfolio``, and a resumable checkpoint."""
    return [
        IterativeMagnitudePruning(rounds=rounds, epochs_per_round=epochs_per_round, rewind_step=rewind_step,
                                  prune_fraction=prune_fraction),
        Compaction(out_dir / "portfolio", example_input_shape=INPUT_SHAPE),
        # save_top_k=1 (the default) writes every epoch, so last.ckpt exists to resume from after a kill
        ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True),
    ]


def run_demo(
    out_dir: str | os.PathLike,
    rounds: int = 10,
    epochs_per_round: int = 2,
    rewind_step: int = 10,
    seed: int = 0,
    extra_callbacks: Sequence[Callback] = (),
    progress_bar: bool = True,
    width: int = 16,
    prune_fraction: float = 0.2,
) -> list[RoundRecord]:
    """Train ``DigitsResNet`` on digits with IMP, compact every round, print the per-round table.

    Writes the portfolio (``portfolio/``: ``manifest.json`` and a ``model.pt2`` per round), the CSV
    logs, ``imp_rounds.json`` and a resumable ``checkpoints/last.ckpt`` under ``out_dir``; returns
    the IMP round records.
    """
    out_dir = Path(out_dir)
    pl.seed_everything(seed, verbose=False)
    callbacks = [*build_callbacks(out_dir, rounds, epochs_per_round, rewind_step, prune_fraction), *extra_callbacks]
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
    model = DigitsResNet(width=width, schedule_epochs=epochs_per_round)
    trainer.fit(model, datamodule=DigitsDataModule(seed=seed))
    return imp.records


# ---------------------------------------------------------------------------------------- after training
def budget_schedule(options: Sequence[Option], duration_s: float) -> list[tuple[float, float]]:
    """A latency budget that drops and rises again, scaled to the programs' measured latencies.

    Four equal phases: generous (every program fits, the most accurate runs), just below the most
    accurate program's latency (a faster one takes over), below every program (the policy falls
    back to the fastest), generous again.

    Example::

        >>> from lightning_shifter.runtime import Option
        >>> options = [Option("dense", "fp32", 0.99, 4.0, None), Option("small", "int8", 0.95, 1.0, None)]
        >>> budget_schedule(options, duration_s=8.0)
        [(0.0, 8.0), (2.0, 3.96), (4.0, 0.5), (6.0, 8.0)]
    """
    if not options:
        raise ValueError("no programs to scale the budget to: export and measure the portfolio first")
    latencies = [o.latency_ms for o in options]
    best = max(options, key=lambda o: (-math.inf if o.accuracy is None else o.accuracy, -o.latency_ms))
    generous, quarter = 2 * max(latencies), duration_s / 4
    return [(0.0, generous), (quarter, 0.99 * best.latency_ms), (2 * quarter, 0.5 * min(latencies)),
            (3 * quarter, generous)]


def host_switch_session(switcher: Switcher, duration_s: float, interval_s: float = 0.01,
                        on_step: Callable[[float], None] | None = None) -> list[dict[str, Any]]:
    """Run one inference every ``interval_s`` for ``duration_s``, letting ``switcher``'s policy pick
    the program from its signals before each; return the events in the report's session format.

    Each event: ``t`` (s since the start), ``variant``, ``precision``, ``latency_ms`` and
    ``budget_ms`` (``conditions["latency_budget_ms"]``); events where the switcher switched also
    carry the policy's ``reason`` and the measured ``switch_us``.
    """
    for signal in switcher.signals:
        if hasattr(signal, "start"):
            signal.start()  # schedules count from the start of the session
    example = torch.randn(switcher.portfolio.input_shape, generator=torch.Generator().manual_seed(0))
    events: list[dict[str, Any]] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration_s:
        conditions = switcher.conditions()
        before = switcher.active
        switcher.select(**conditions)
        result = switcher.run(example)
        event: dict[str, Any] = {"t": elapsed, "variant": result.name, "precision": result.precision,
                                 "latency_ms": result.latency_ms, "budget_ms": conditions.get("latency_budget_ms")}
        if switcher.active != before:
            switch = switcher.history[-1]
            event.update(reason=switch.reason, switch_us=switch.overhead_ms * 1e3)
        events.append(event)
        if on_step is not None:
            on_step(elapsed)
        time.sleep(max(0.0, start + len(events) * interval_s - time.monotonic()))
    return events


def device_session_events(report: SwitchReport) -> list[dict[str, Any]]:
    """A device :class:`~lightning_shifter.device.SwitchReport` in the report's session format: the
    initial choice, one event per switch (with ``switch_us``), and one marking the end of the session."""
    events = [{"t": s.time_s, "variant": s.name, "precision": s.precision, "reason": s.reason,
               "budget_ms": s.conditions.get("latency_budget_ms")} for s in report.switches]
    for event, switch in zip(events, report.switches):
        if switch.previous is not None:  # the first is the initial choice, not a switch
            event["switch_us"] = switch.switch_us
    if events:
        last = events[-1]
        events.append({"t": report.duration_s, "variant": last["variant"], "precision": last["precision"],
                       "budget_ms": last["budget_ms"]})
    return events


def switching_summary(events: Sequence[dict[str, Any]], load_ms: Sequence[float], inferences: int) -> dict[str, Any]:
    """Switch count and overheads of a session, against loading a program from storage (``load_ms``)."""
    overheads = sorted(float(e["switch_us"]) for e in events if e.get("switch_us") is not None)
    summary: dict[str, Any] = {"inferences": inferences, "switches": len(overheads),
                               "programs": sorted({f"{e['variant']}/{e.get('precision', 'fp32')}" for e in events})}
    if overheads:
        summary.update(switch_us_median=statistics.median(overheads), switch_us_max=overheads[-1])
    if load_ms:
        summary["load_ms_median"] = statistics.median(load_ms)
        if overheads:
            summary["speedup_vs_load"] = summary["load_ms_median"] * 1e3 / max(summary["switch_us_median"], 1e-3)
    return summary
