"""CIFAR-10 with a CIFAR ResNet: one training run becomes a portfolio of exact, compacted variants.

The model and the data module are ordinary Lightning code; the shifter is three callbacks. The
default schedule follows DNNShifter: global magnitude pruning of 20% of the remaining conv and
linear weights per round, rewinding the survivors to an early step, 25 rounds (density
0.8^25 = 0.4%). Epochs per round and the rewind step are this example's choice, not the paper's.
``--alpha 2`` prunes with the structure-aware ``ChannelAwareMagnitude`` instead, which empties whole
filters sooner, so that compaction pays several rounds (of training) earlier (README, "Real runs").

Run it::

    python examples/cifar10_resnet.py --download                   # online: fetches CIFAR-10
    python examples/cifar10_resnet.py --data-dir /data/cifar10      # offline: an existing copy
    python examples/cifar10_resnet.py --fake-data 256 --rounds 1    # generated images, a smoke test

then ``lightning-shifter report runs/cifar10/portfolio`` and ``lightning-shifter device bench ...``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, random_split
from torchmetrics.classification import MulticlassAccuracy

from lightning_shifter import Compaction, ExecuTorchExport, IterativeMagnitudePruning
from lightning_shifter.criteria import ChannelAwareMagnitude, magnitude

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(pl.LightningModule):
    """ResNet-(6n+2) for 32x32 images (He et al. 2016): three stages of ``n`` basic blocks at 16, 32
    and 64 channels (times ``width``). ``depth=20`` is ResNet-20. SGD, cosine schedule per round."""

    def __init__(self, depth: int = 20, width: int = 1, lr: float = 0.1, weight_decay: float = 5e-4,
                 schedule_epochs: int = 30) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (8, 14, 20, 32, 56, ...), got {depth}")
        self.save_hyperparameters()
        n, channels = (depth - 2) // 6, [16 * width, 32 * width, 64 * width]
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU())
        blocks, previous = [], channels[0]
        for stage, out in enumerate(channels):
            for index in range(n):
                blocks.append(BasicBlock(previous, out, 2 if stage and not index else 1))
                previous = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(previous, 10)
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.example_input_array = torch.zeros(1, 3, 32, 32)  # the shape Compaction exports variants for

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
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
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.schedule_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class CIFAR10DataModule(pl.LightningDataModule):
    """torchvision's CIFAR-10 (``download=True`` fetches it), or ``fake_data`` generated images of the
    same shape and classes for tests and offline smoke runs. 5,000 training images are held out for
    validation."""

    def __init__(self, data_dir: str = "data/cifar10", download: bool = False, batch_size: int = 128,
                 fake_data: int = 0, num_workers: int = 2) -> None:
        super().__init__()
        self.data_dir, self.download, self.batch_size = data_dir, download, batch_size
        self.fake_data, self.num_workers = fake_data, num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        from torchvision import datasets, transforms

        normalize = transforms.Normalize(MEAN, STD)
        train_transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                              transforms.ToTensor(), normalize])
        if self.fake_data:
            full = datasets.FakeData(self.fake_data, (3, 32, 32), 10, transforms.Compose([transforms.ToTensor(), normalize]),
                                     random_offset=0)
            n_val = max(1, self.fake_data // 10)
            self.train_set, self.val_set = random_split(full, [self.fake_data - n_val, n_val],
                                                        generator=torch.Generator().manual_seed(0))
            return
        try:
            train = datasets.CIFAR10(self.data_dir, train=True, transform=train_transform, download=self.download)
            plain = datasets.CIFAR10(self.data_dir, train=True, transform=transforms.Compose([transforms.ToTensor(), normalize]))
        except RuntimeError as err:  # "Dataset not found or corrupted"
            raise RuntimeError(f"{err}: pass --download (needs internet) or --data-dir with an extracted "
                               "cifar-10-batches-py folder") from None
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
        self.train_set = torch.utils.data.Subset(train, order[5000:])
        self.val_set = torch.utils.data.Subset(plain, order[:5000])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 256, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/cifar10", help="where CIFAR-10 is (or is downloaded to)")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 (needs internet)")
    parser.add_argument("--fake-data", type=int, default=0, metavar="N", help="use N generated images instead")
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10"), help="logs, checkpoints and portfolio/")
    parser.add_argument("--depth", type=int, default=20, help="ResNet depth 6n+2 (default: 20)")
    parser.add_argument("--rounds", type=int, default=25, help="pruning rounds (default: 25, density 0.8^25)")
    parser.add_argument("--epochs-per-round", type=int, default=30, help="epochs per round (default: 30)")
    parser.add_argument("--rewind-step", type=int, default=500, help="optimizer step to rewind to (default: 500)")
    parser.add_argument("--alpha", type=float, default=0.0,
                        help="ChannelAwareMagnitude's alpha; 0 (default) is plain magnitude pruning, DNNShifter's")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=("fp32", "int8"))
    args = parser.parse_args(argv)

    imp = IterativeMagnitudePruning(rounds=args.rounds, epochs_per_round=args.epochs_per_round,
                                    rewind_step=args.rewind_step,
                                    criterion=ChannelAwareMagnitude(alpha=args.alpha) if args.alpha else magnitude)
    trainer = pl.Trainer(
        max_epochs=imp.epochs_needed,
        default_root_dir=args.out,
        callbacks=[imp, Compaction(args.out / "portfolio"), ExecuTorchExport(precisions=args.precisions)],
    )
    model = CifarResNet(depth=args.depth, schedule_epochs=args.epochs_per_round)
    data = CIFAR10DataModule(args.data_dir, args.download, args.batch_size, args.fake_data, args.workers)
    trainer.fit(model, datamodule=data)
    return trainer


if __name__ == "__main__":
    main()
