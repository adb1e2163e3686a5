"""The demo's data: scikit-learn's 1,797 real 8x8 handwritten digits, as a LightningDataModule.

Nothing is downloaded: the images ship with scikit-learn.

Example::

    >>> from lightning_shifter.demo.data import DigitsDataModule
    >>> dm = DigitsDataModule(image_size=12)
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), len(dm.train_set) + len(dm.val_set)
    ((64, 1, 12, 12), 1797)
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset


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
