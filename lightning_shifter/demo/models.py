"""The demo's models, plain LightningModules: a small residual CNN and an over-parameterized VGG-style one.

Example::

    >>> import torch
    >>> from lightning_shifter.demo.models import MODELS
    >>> [(name, tuple(cls(width=4)(torch.zeros(2, 1, 8, 8)).shape)) for name, cls in MODELS.items()]
    [('vgg', (2, 10)), ('resnet', (2, 10))]
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

NUM_CLASSES = 10


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
