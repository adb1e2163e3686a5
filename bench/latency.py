"""Latency benchmark: ExecuTorch (XNNPACK, fp32) latency of compacted vs sparse programs, next to MACs.

For each density 0.8^k of one architecture (default torchvision ResNet-18, 10 classes, 1x3x32x32)
with the IMP-like masks of ``bench/export.py``, two programs are exported: the sparse model as
it is (same zeros, full shapes) and its exact compaction. Both are timed in this process, in
alternating rounds so that load on the machine hits both alike. Reported per variant: p50/p90 of
each, the measured speedup (sparse p50 / compacted p50), the MAC-count ratio (sparse MACs /
compacted MACs: the ideal speedup) and measured / ideal (DESIGN.md target: >= 0.8).

Run: ``python bench/latency.py [--model resnet18] [--ks 4,8,12,16,20,24] [--rounds 5 --runs 20]``;
writes ``bench/results/latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from export import MODELS, SHAPE, build_portfolios  # noqa: E402  (bench/export.py)

from lightning_shifter.export import export_portfolio  # noqa: E402
from lightning_shifter.portfolio import Portfolio  # noqa: E402
from lightning_shifter.batches import example_input  # noqa: E402
from lightning_shifter.runtime import load_method  # noqa: E402


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--ks", default="4,8,12,16,20,24", help="density exponents k (density 0.8^k)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--runs", type=int, default=20, help="timed inferences per program per round")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency.json")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    rows = []
    try:
        compacted_root, sparse_root = build_portfolios(work, args.model, ks, sparse=True)
        for root in (compacted_root, sparse_root):
            export_portfolio(root, ("fp32",), measure=False)
        compacted, sparse = Portfolio.open(compacted_root), Portfolio.open(sparse_root)
        x = [example_input(SHAPE)]
        for k in ks:
            name = f"k{k:02d}"
            methods = {kind: load_method(p.file_path(name, "fp32"))[0] for kind, p in (("sparse", sparse), ("compacted", compacted))}
            samples: dict[str, list[float]] = {"sparse": [], "compacted": []}
            for method in methods.values():
                for _ in range(5):
                    method.execute(x)
            for _ in range(args.rounds):
                for kind, method in methods.items():
                    for _ in range(args.runs):
                        start = time.perf_counter()
                        method.execute(x)
                        samples[kind].append((time.perf_counter() - start) * 1e3)
            sparse_macs = sparse[name].macs
            mac_ratio = sparse_macs / compacted[name].macs
            p50 = {kind: statistics.median(s) for kind, s in samples.items()}
            speedup = p50["sparse"] / p50["compacted"]
            rows.append({
                "variant": name, "density": compacted[name].density,
                "sparse_p50_ms": p50["sparse"], "sparse_p90_ms": percentile(samples["sparse"], 90),
                "compacted_p50_ms": p50["compacted"], "compacted_p90_ms": percentile(samples["compacted"], 90),
                "measured_speedup": speedup, "mac_ratio": mac_ratio, "measured_over_ideal": speedup / mac_ratio,
                "sparse_macs": sparse_macs, "compacted_macs": compacted[name].macs,
                "sparse_kib": sparse[name].files["fp32"].bytes / 1024, "compacted_kib": compacted[name].files["fp32"].bytes / 1024,
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"ExecuTorch fp32 latency, compacted vs sparse {args.model} ({os.cpu_count()} cores, "
                        f"{args.rounds}x{args.runs} runs each)")
    for column in ("variant", "density", "sparse p50/p90 ms", "compacted p50/p90 ms", "speedup", "MAC ratio",
                   "measured/ideal", "KiB sparse -> compacted"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["variant"], f"{r['density']:.4f}", f"{r['sparse_p50_ms']:.3f} / {r['sparse_p90_ms']:.3f}",
                      f"{r['compacted_p50_ms']:.3f} / {r['compacted_p90_ms']:.3f}", f"{r['measured_speedup']:.2f}x",
                      f"{r['mac_ratio']:.2f}x", f"{r['measured_over_ideal']:.2f}",
                      f"{r['sparse_kib']:.0f} -> {r['compacted_kib']:.0f}")
    Console(width=160).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "input_shape": list(SHAPE), "cores": os.cpu_count(),
                                    "rounds": args.rounds, "runs": args.runs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
