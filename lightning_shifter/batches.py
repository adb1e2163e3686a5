"""What the package reads from the user's data: example inputs, batches, loaders and top-1 accuracy.

One home for what the training side (the Compaction callback, ``add_variant``) and the deployment side
(the exporter, the Switcher) both do with data, so that both read a batch, pick a loader, make an
example input and count an accuracy the same way. torch only; torchmetrics is imported where an
accuracy is counted.

Example::

    >>> import torch
    >>> from lightning_shifter.batches import default_unpack, example_input, top1_accuracy
    >>> batches = [(torch.eye(3), torch.tensor([0, 1, 1]))]  # logits of 3 classes, then the targets
    >>> top1_accuracy(lambda x: x, batches)  # 2 of 3 right
    0.6666...
    >>> example_input((1, 4), "float32").shape, example_input((2,), "int64").tolist()
    (torch.Size([1, 4]), [0, 0])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

#: batch -> ``(inputs, targets)``
Unpack = Callable[[Any], tuple[Tensor, Tensor]]


def example_input(shape: Sequence[int], dtype: str = "float32", seed: int = 0) -> Tensor:
    """A deterministic input of a portfolio's shape and dtype (a dtype name such as ``"float32"``).

    Floating-point dtypes get standard normal values from ``seed``; other dtypes get zeros (random
    values cast to integers would be negative, which models that take indices refuse).

    Example::

        >>> from lightning_shifter.batches import example_input
        >>> bool((example_input((2, 3), seed=1) == example_input((2, 3), seed=1)).all())
        True
        >>> example_input((2, 3), "bfloat16").dtype
        torch.bfloat16
    """
    torch_dtype = getattr(torch, dtype)
    if not torch_dtype.is_floating_point:
        return torch.zeros(*shape, dtype=torch_dtype)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch_dtype)


def default_unpack(batch: Any) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of a ``(inputs, targets, ...)`` batch, as classification loaders yield.

    Example::

        >>> import torch
        >>> from lightning_shifter.batches import default_unpack
        >>> x, y = default_unpack((torch.zeros(2, 3), torch.tensor([0, 1]), "extra"))
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [0, 1])
    """
    inputs = targets = None
    if not isinstance(batch, Tensor):  # a bare tensor batch has no targets, its rows are not (x, y)
        try:
            inputs, targets = batch[0], batch[1]
        except (TypeError, IndexError, KeyError):
            pass
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise ValueError(
            f"cannot take (inputs, targets) tensors from a batch of type {type(batch).__name__}: pass "
            "unpack=... (Compaction(unpack_batch=...)), a function batch -> (inputs, targets)"
        )
    return inputs, targets


def batch_inputs(batch: Any) -> Tensor:
    """The inputs of a batch that is a tensor or an ``(inputs, ...)`` sequence (targets not needed).

    Example::

        >>> import torch
        >>> from lightning_shifter.batches import batch_inputs
        >>> batch_inputs(torch.ones(2)).tolist(), batch_inputs([torch.zeros(1), "label"]).tolist()
        ([1.0, 1.0], [0.0])
    """
    x = batch if isinstance(batch, Tensor) else batch[0] if isinstance(batch, (tuple, list)) and batch else None
    if not isinstance(x, Tensor):
        raise ValueError(
            f"cannot take an input tensor from a batch of type {type(batch).__name__}: give batches that are "
            "tensors or (inputs, targets, ...) sequences"
        )
    return x


def first_loader(loaders: Any) -> Any:
    """The first of a Trainer's dataloaders: one loader as it is, the first of a list or tuple, the
    first value of a dict; ``None`` for an empty list or dict (there is no loader).

    Example::

        >>> from lightning_shifter.batches import first_loader
        >>> first_loader({"val": "loader a", "test": "loader b"}), first_loader(["x"]), first_loader([])
        ('loader a', 'x', None)
    """
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    return loaders


def class_logits(output: Any, what: str = "the model", remedy: str = "measure its accuracy yourself") -> Tensor:
    """The class logits in the output of ``what`` (the first of several outputs), checked to be
    ``[batch, classes >= 2]``; ``remedy`` ends the error message for anything else.

    Example::

        >>> import torch
        >>> from lightning_shifter.batches import class_logits
        >>> class_logits([torch.zeros(4, 10), torch.zeros(4)]).shape
        torch.Size([4, 10])
        >>> class_logits(torch.zeros(4), "the program", "export it without validation data")
        Traceback (most recent call last):
            ...
        ValueError: accuracy needs class logits of shape [batch, classes >= 2] (the first output), the program
        returned [4]; export it without validation data
    """
    logits = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"accuracy needs class logits of shape [batch, classes >= 2] (the first output), {what} "
                         f"returned {shape}; {remedy}")
    return logits


@torch.no_grad()
def top1_accuracy(predict: Callable[[Tensor], Any], batches: Iterable[Any], unpack: Unpack = default_unpack,
                  what: str = "the model", remedy: str = "measure its accuracy yourself") -> float:
    """Top-1 accuracy (torchmetrics' ``MulticlassAccuracy``, micro average) of ``predict(inputs)`` over
    ``batches``; ``predict`` returns class logits (or outputs whose first is, :func:`class_logits`).

    Raises:
        ValueError: there is no batch, or ``what`` returns no class logits (``remedy`` says what to do).

    Example::

        >>> import torch
        >>> from lightning_shifter.batches import top1_accuracy
        >>> batches = [(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))]
        >>> top1_accuracy(lambda x: x, batches)
        0.5
    """
    from torchmetrics.classification import MulticlassAccuracy

    metric: MulticlassAccuracy | None = None
    for batch in batches:
        inputs, targets = unpack(batch)
        logits = class_logits(predict(inputs), what, remedy)
        if metric is None:
            metric = MulticlassAccuracy(num_classes=logits.shape[1], average="micro").to(logits.device)
        metric.update(logits, targets.to(logits.device))
    if metric is None:
        raise ValueError("there is no batch to evaluate on: the validation data is empty")
    return float(metric.compute())
