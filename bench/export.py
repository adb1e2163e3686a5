"""Export benchmark: ExecuTorch export time per variant and for a whole portfolio, 1 vs 2 workers.

A portfolio of compacted variants is built from one architecture (default torchvision ResNet-18,
10 classes, 1x3x32x32) at densities 0.8^k with the IMP-like masks of ``bench/compaction.py``
(``realistic_masks``: global magnitude with per-layer floors plus dead filters concentrated in the
wide layers, batch-norm affine masked), each compacted exactly by
``add_variant``. Then ``export_portfolio`` lowers every variant to fp32 and int8 twice, side by
side in one run: in this process (``workers=1``) and in two spawned processes (``workers=2``), and
a third time with nothing changed (everything skipped by hash).

int8 is calibrated on random inputs and its accuracy check is off (``int8_max_accuracy_drop=1``):
this measures time, the models are untrained.

Run: ``python bench/export.py [--model resnet18] [--ks 0,8,16,24]``; writes
``bench/results/export.json``. ``bench/latency.py`` and ``bench/switching.py`` reuse
:func:`build_portfolios`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision
from rich.console import Console
from rich.table import Table

from lightning_shifter.compaction import count_macs
from lightning_shifter.export import export_portfolio
from lightning_shifter.portfolio import Portfolio, Variant
from lightning_shifter.variants import add_variant, model_density

from compaction import SHAPE, realistic_masks, vgg16_bn_cifar  # noqa: E402  (bench/compaction.py)

MODELS = {"resnet18": lambda: torchvision.models.resnet18(num_classes=10), "vgg16_bn": vgg16_bn_cifar}


def build_portfolios(root: Path, model: str, ks: list[int], sparse: bool = False, seed: int = 0) -> tuple[Path, Path | None]:
    """``root/compacted``: variant ``k<k>`` = the model at density 0.8^k, compacted. With ``sparse``
    also ``root/sparse``: the same sparse models uncompacted (same zeros, full shapes)."""
    example = torch.zeros(SHAPE)
    compacted = Portfolio.create(root / "compacted", SHAPE)
    uncompacted = Portfolio.create(root / "sparse", SHAPE) if sparse else None
    for k in ks:
        torch.manual_seed(seed)
        net = MODELS[model]().eval()
        if k:
            realistic_masks(net, k, seed=seed + k)
        name = f"k{k:02d}"
        add_variant(compacted, net, example, name=name, round=k)
        if uncompacted is not None:
            program = torch.export.export(net, (example,))
            entry = uncompacted.write_file(name, "pt2", lambda f: torch.export.save(program, f))
            params = sum(p.numel() for p in net.parameters())
            uncompacted.put_variant(Variant(name=name, round=k, density=model_density(net), params=params,
                                            macs=count_macs(net, example), files={"pt2": entry}))
    return compacted.root, None if uncompacted is None else uncompacted.root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--ks", default="0,8,16,24", help="density exponents k (density 0.8^k)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export.json")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        start = time.perf_counter()
        root, _ = build_portfolios(work, args.model, ks)
        build_s = time.perf_counter() - start
        calibration = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(8)]
        reports = {}
        for workers in (1, 2):
            copy = Path(shutil.copytree(root, work / f"w{workers}"))
            reports[workers] = export_portfolio(copy, ("fp32", "int8"), calibration_data=calibration, workers=workers,
                                                int8_max_accuracy_drop=1.0, runs=10)
        rerun = export_portfolio(work / "w1", ("fp32", "int8"), calibration_data=calibration, runs=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"ExecuTorch export of a {args.model} portfolio ({len(ks)} variants, {os.cpu_count()} cores)")
    for column in ("variant", "density", "fp32 s", "int8 s", "fp32 KiB", "int8 KiB", "status"):
        table.add_column(column, justify="right")
    rows = []
    serial = reports[1]
    by_key = {(p.name, p.precision): p for p in serial.programs}
    for k in ks:
        name = f"k{k:02d}"
        fp32, int8 = by_key[name, "fp32"], by_key[name, "int8"]
        rows.append({"variant": name, "density": 0.8**k, "fp32_s": fp32.seconds, "int8_s": int8.seconds,
                     "fp32_bytes": fp32.bytes, "int8_bytes": int8.bytes, "status": [fp32.status, int8.status]})
        table.add_row(name, f"{0.8**k:.3f}", f"{fp32.seconds:.2f}", f"{int8.seconds:.2f}",
                      f"{(fp32.bytes or 0) / 1024:.0f}", f"{(int8.bytes or 0) / 1024:.0f}", f"{fp32.status}/{int8.status}")
    console = Console(width=150)
    console.print(table)
    summary = Table(title="whole portfolio (fp32 + int8, host timing included)")
    for column in ("run", "seconds", "ratio to 1 worker"):
        summary.add_column(column, justify="right")
    totals = {"1 worker": serial.seconds, "2 workers (spawn)": reports[2].seconds, "re-run, unchanged": rerun.seconds}
    for label, seconds in totals.items():
        summary.add_row(label, f"{seconds:.2f}", f"{seconds / serial.seconds:.3f}")
    console.print(summary)
    console.print(f"building (compaction + torch.export) took {build_s:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "input_shape": list(SHAPE), "cores": os.cpu_count(), "variants": rows,
        "portfolio_seconds": {"workers_1": serial.seconds, "workers_2": reports[2].seconds, "rerun_unchanged": rerun.seconds},
        "parallel_speedup": serial.seconds / reports[2].seconds,
        "rerun_skipped": len(rerun.skipped), "rerun_programs": len(rerun.programs),
    }, indent=2))


if __name__ == "__main__":
    main()
