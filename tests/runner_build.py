"""Builds the native runner (``mobile/build.sh``, through the package) and a small real portfolio for its tests.

``make_portfolio`` writes a portfolio of tiny conv nets of different widths through the project's
own :class:`lightning_shifter.portfolio.Portfolio`, exported like the pipeline does:
``torch.export`` -> XNNPACK lowering -> ``.pte`` (fp32 and int8).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

INPUT_SHAPE = (1, 1, 8, 8)


def build_runner(target: str = "host") -> Path:
    """Builds (or brings up to date) the runner for ``target`` through the package's locator (the same
    ``mobile/build.sh`` call every command makes) and returns the path of ``shifter_runner``."""
    from lightning_shifter.device.locator import build_runner as build

    return build(target, progress=None)


class TinyConvNet(nn.Module):
    """Two convolutions, batch norm, global pooling and a classifier: a portfolio variant in small."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def pattern_input(shape: tuple[int, ...] = INPUT_SHAPE) -> torch.Tensor:
    """The runner's generated input: x[i] = float32((i * 37) % 101) / 50 - 1, in C order."""
    count = 1
    for dim in shape:
        count *= dim
    index = torch.arange(count, dtype=torch.int64)
    return (((index * 37) % 101).to(torch.float32) / 50.0 - 1.0).reshape(shape)


def export_pte(model: nn.Module, example: torch.Tensor, int8: bool = False) -> bytes:
    """Lowers ``model`` to an ExecuTorch program with the XNNPACK delegate (optionally int8)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = model.eval()
    if int8:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
        prepared(example)
        model = convert_pt2e(prepared)
    program = torch.export.export(model, (example,))
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


@dataclass
class Portfolio:
    """A written portfolio, its manifest as the runner reads it, and the eager model of every variant."""

    directory: Path
    manifest: dict
    models: dict[str, nn.Module]  # eager reference of every variant, by name

    def pte(self, name: str, precision: str = "fp32") -> Path:
        entry = next(v for v in self.manifest["variants"] if v["name"] == name)
        return self.directory / entry["files"][precision]["path"]


def make_portfolio(directory: Path, widths: tuple[int, ...] = (4, 8, 16), int8_variants: int = 2) -> Portfolio:
    """Writes a real portfolio of ``TinyConvNet`` variants (one per width, widest first); the first
    ``int8_variants`` of them also get an int8 program."""
    from lightning_shifter.compaction import count_macs
    from lightning_shifter.portfolio import Portfolio as Manifest
    from lightning_shifter.portfolio import Variant

    manifest = Manifest.create(directory, input_shape=INPUT_SHAPE)
    example = pattern_input()
    models = {}
    for round_index, width in enumerate(sorted(widths, reverse=True)):
        torch.manual_seed(width)
        model = TinyConvNet(width).eval()
        with torch.no_grad():  # non-trivial batch-norm statistics, as after training
            model.features[1].running_mean.uniform_(-0.5, 0.5)
            model.features[1].running_var.uniform_(0.5, 2.0)
        name = f"round-{round_index:02d}"
        files = {"fp32": manifest.write_file(name, "fp32", export_pte(model, example))}
        if round_index < int8_variants:
            files["int8"] = manifest.write_file(name, "int8", export_pte(model, example, int8=True))
        manifest.put_variant(Variant(
            name=name, round=round_index, density=0.8**round_index, params=sum(p.numel() for p in model.parameters()),
            macs=count_macs(model, example), files=files))
        models[name] = model
    return Portfolio(directory, json.loads((directory / "manifest.json").read_text()), models)
