"""Compact a sparse model that was pruned elsewhere: no training, no Lightning.

Here torchvision's ResNet-18 is pruned with ``torch.nn.utils.prune`` (whole filters of every
convolution by L2 norm, the way structured pruners leave them: zeroed, not removed). ``compact``
physically removes every channel that provably does not change the output, checks that the
compacted model computes the same function, and reports what went. ``--portfolio`` also saves it
as a variant (``model.pt2`` + manifest entry) for export and devices.

    python examples/compact_only.py --amount 0.5 --portfolio runs/compact-only
    lightning-shifter export runs/compact-only            # then: ExecuTorch programs
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from rich.console import Console
from torch import nn
from torch.nn.utils import prune

from lightning_shifter import compact
from lightning_shifter.portfolio import Portfolio
from lightning_shifter.variants import add_variant


def pruned_resnet18(amount: float) -> nn.Module:
    """ResNet-18 with ``amount`` of the filters of every convolution zeroed (pruning hooks left in place)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            prune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
    return model


def main(argv: Sequence[str] | None = None) -> nn.Module:
    parser = argparse.ArgumentParser(description="Compact a sparse ResNet-18 pruned with torch.nn.utils.prune.")
    parser.add_argument("--amount", type=float, default=0.5, help="fraction of filters zeroed per convolution")
    parser.add_argument("--input-size", type=int, default=64, help="input height and width")
    parser.add_argument("--portfolio", type=Path, default=None, help="also save the result as a portfolio variant")
    args = parser.parse_args(argv)

    model = pruned_resnet18(args.amount)
    example = torch.randn(1, 3, args.input_size, args.input_size)
    result = compact(model, example)  # the input model is left as it is
    console = Console()
    console.print(result.report.table())
    report = result.report
    console.print(f"params {report.params_before:,} -> {report.params_after:,} "
                  f"({report.params_before / report.params_after:.2f}x smaller), MACs {report.macs_before:,} -> "
                  f"{report.macs_after:,}, max |compacted - sparse| = {report.max_abs_error:.1e}")
    if args.portfolio is not None:
        for module in model.modules():  # make the pruning permanent: the portfolio stores plain weights
            if prune.is_pruned(module) and hasattr(module, "weight_orig"):
                prune.remove(module, "weight")
        portfolio = Portfolio.create(args.portfolio, input_shape=tuple(example.shape))
        variant = add_variant(portfolio, model, example, name="resnet18-pruned", round=0)
        console.print(f"saved variant {variant.name} to {args.portfolio}")
    return result.module


if __name__ == "__main__":
    main()
