"""The demo: a CNN on scikit-learn's bundled digits, trained with IMP, compacted, exported, switched.

Everything here is what a user would write anyway: a DataModule (:mod:`~lightning_shifter.demo.data`),
plain LightningModules (:mod:`~lightning_shifter.demo.models`) and a Trainer with the shifter callbacks
(:mod:`~lightning_shifter.demo.training`). Tests and examples reuse :class:`DigitsDataModule`,
:class:`DigitsResNet` and :class:`DigitsVGG` from here. The rest of ``lightning-shifter demo`` (export,
benchmarks, switching sessions, report) is :mod:`lightning_shifter.demo.pipeline`.

Example::

    >>> from lightning_shifter.demo import DigitsDataModule, DigitsResNet
    >>> dm = DigitsDataModule()
    >>> dm.setup("fit")
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), DigitsResNet()(x).shape[-1]
    ((64, 1, 8, 8), 10)
"""

from lightning_shifter.demo.data import DigitsDataModule, EpochSeededShuffle
from lightning_shifter.demo.models import MODELS, NUM_CLASSES, BasicBlock, DigitsClassifier, DigitsResNet, DigitsVGG
from lightning_shifter.demo.training import (
    OriginalRule,
    build_callbacks,
    headline_summary,
    original_rule_notes,
    run_demo,
)

__all__ = [
    "MODELS", "NUM_CLASSES", "BasicBlock", "DigitsClassifier", "DigitsDataModule", "DigitsResNet", "DigitsVGG",
    "EpochSeededShuffle", "OriginalRule", "build_callbacks", "headline_summary", "original_rule_notes", "run_demo",
]
