"""Switching benchmark: preloaded switch vs loading from storage vs rebuilding a PyTorch module, and
resident memory of the compacted portfolio vs one dense model vs the same portfolio uncompacted.

One architecture (default torchvision ResNet-18, 10 classes, 1x3x32x32) at densities 0.8^k with the
IMP-like masks of ``bench/export.py`` makes a portfolio of exactly compacted variants (``k00``
is the dense model) and a twin portfolio of the same sparse models uncompacted; both are exported
to fp32 ``.pte``. Then, side by side in one run:

- switch: ``Switcher.switch()`` between preloaded programs (the whole call, logging included);
- on demand: ``load_program`` + ``load_method`` of the variant's ``.pte`` (memory-mapped; the file
  is in the page cache, so this is the best case of loading from storage);
- rebuild: the variant's PyTorch module from ``model.pt2`` (``Portfolio.load_module``);
each also followed by the first inference. Memory: resident set growth of a fresh process that
loads the programs and runs each once (DESIGN.md targets: switch >= 50x cheaper than loading and
< 1 ms; portfolio memory <= 1.5x one dense model).

Run: ``python bench/switching.py [--model resnet18] [--ks 0,6,12,18,24]``; writes
``bench/results/switching.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))


def rss_child(paths: list[str]) -> None:
    """In a fresh process: resident set growth (KiB) from loading ``paths`` and running each once."""
    from lightning_shifter.batches import example_input
    from lightning_shifter.runtime import load_method

    x = [example_input(json.loads(os.environ["BENCH_SHAPE"]))]
    # the runtime's own first-use allocations are not the models': a tiny program of its own takes them
    # (warming up with one of ``paths`` would leave its freed pages resident for its measured load)
    warm, _ = load_method(os.environ["BENCH_WARM"])
    warm.execute(x)
    before = _rss_kib()
    methods = [load_method(p)[0] for p in paths]
    for method in methods:
        method.execute(x)
    after = _rss_kib()
    print(json.dumps({key: after[key] - before[key] for key in before}))


def _rss_kib() -> dict[str, int]:
    """Resident set (VmRSS) and its private part (RssAnon; the rest is mapped file pages)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0])
    if len(fields) != 2:
        raise RuntimeError("no VmRSS/RssAnon in /proc/self/status: this benchmark needs Linux")
    return fields


def warm_program(shape: tuple[int, ...], folder: Path) -> Path:
    """A tiny fp32 program taking ``shape``: loaded first by :func:`rss_child` to warm the runtime up."""
    import math

    import torch

    from lightning_shifter.export import lower

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(shape[1:]), 2)).eval()
    path = folder / "warm.pte"
    path.write_bytes(lower(torch.export.export(model, (torch.zeros(shape),)))[0])
    return path


def rss_growth_mib(paths: list[Path], shape: tuple[int, ...], warm: Path, repeats: int = 3) -> dict[str, float]:
    """Median resident-set growth (MiB) of a fresh process loading ``paths`` after ``warm``."""
    samples = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--rss-child", *map(str, paths)], capture_output=True, text=True,
                             check=True, env={**os.environ, "BENCH_SHAPE": json.dumps(list(shape)), "BENCH_WARM": str(warm)})
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(s[key] for s in samples) / 1024 for key in samples[0]}


def timed_ms(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    from export import MODELS, SHAPE, build_portfolios  # bench/export.py

    from lightning_shifter.export import export_portfolio
    from lightning_shifter.portfolio import Portfolio
    from lightning_shifter.batches import example_input
    from lightning_shifter.runtime import Switcher, load_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--ks", default="0,6,12,18,24", help="density exponents k (density 0.8^k); include 0")
    parser.add_argument("--switches", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5, help="loads / rebuilds per variant")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "switching.json")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    if 0 not in ks:
        parser.error("--ks must include 0: the dense model is the memory reference")
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="bench-switching-"))
    try:
        compacted_root, sparse_root = build_portfolios(work, args.model, ks, sparse=True)
        for root in (compacted_root, sparse_root):
            export_portfolio(root, ("fp32",), measure=False)
        compacted, sparse = Portfolio.open(compacted_root), Portfolio.open(sparse_root)
        names = compacted.names
        x = example_input(SHAPE)

        switcher = Switcher(compacted_root, runs=5)
        samples = []
        for i in range(args.switches):
            name = names[i % len(names)]
            start = time.perf_counter()
            switcher.switch(name, reason="bench")
            samples.append((time.perf_counter() - start) * 1e3)
        switch_ms = statistics.median(samples)
        switch_infer_ms = statistics.median(
            timed_ms(lambda n=n: (switcher.switch(n, reason="bench"), switcher(x)), args.repeats) for n in names)
        load_ms = statistics.median(timed_ms(lambda n=n: load_method(compacted.file_path(n, "fp32")), args.repeats) for n in names)
        load_infer_ms = statistics.median(
            timed_ms(lambda n=n: load_method(compacted.file_path(n, "fp32"))[0].execute([x]), args.repeats) for n in names)
        rebuild_ms = statistics.median(timed_ms(lambda n=n: compacted.load_module(n), args.repeats) for n in names)
        rebuild_infer_ms = statistics.median(timed_ms(lambda n=n: compacted.load_module(n)(x), args.repeats) for n in names)
        del switcher
        warm = warm_program(SHAPE, work)

        memory = {
            "compacted portfolio": rss_growth_mib([compacted.file_path(n, "fp32") for n in names], SHAPE, warm),
            "one dense model": rss_growth_mib([compacted.file_path("k00", "fp32")], SHAPE, warm),
            "uncompacted portfolio": rss_growth_mib([sparse.file_path(n, "fp32") for n in names], SHAPE, warm),
        }
        sizes = {"compacted portfolio": sum(v.files["fp32"].bytes for v in compacted) / 2**20,
                 "one dense model": compacted["k00"].files["fp32"].bytes / 2**20,
                 "uncompacted portfolio": sum(v.files["fp32"].bytes for v in sparse) / 2**20}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    console = Console(width=150)
    table = Table(title=f"Switching between {len(names)} {args.model} variants ({os.cpu_count()} cores; medians)")
    for column in ("how", "switch ms", "ratio to preloaded", "with first inference ms", "ratio to preloaded"):
        table.add_column(column, justify="right")
    timings = {"preloaded Switcher.switch": (switch_ms, switch_infer_ms),
               "load .pte on demand": (load_ms, load_infer_ms),
               "rebuild PyTorch module (.pt2)": (rebuild_ms, rebuild_infer_ms)}
    for label, (alone, with_inference) in timings.items():
        table.add_row(label, f"{alone:.4f}", f"{alone / switch_ms:.0f}x", f"{with_inference:.3f}",
                      f"{with_inference / switch_infer_ms:.1f}x")
    console.print(table)
    mem_table = Table(title="Resident memory growth of a fresh process (all programs loaded, each run once)")
    for column in ("what", "RSS MiB", "ratio to one dense model", "private (anon) MiB", "ratio", ".pte MiB on disk"):
        mem_table.add_column(column, justify="right")
    dense = memory["one dense model"]
    for label, mib in memory.items():
        mem_table.add_row(label, f"{mib['VmRSS']:.1f}", f"{mib['VmRSS'] / dense['VmRSS']:.2f}",
                          f"{mib['RssAnon']:.1f}", f"{mib['RssAnon'] / dense['RssAnon']:.2f}", f"{sizes[label]:.1f}")
    console.print(mem_table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "input_shape": list(SHAPE), "variants": names, "cores": os.cpu_count(),
        "switch_ms": switch_ms, "switch_with_inference_ms": switch_infer_ms,
        "load_on_demand_ms": load_ms, "load_with_inference_ms": load_infer_ms,
        "rebuild_pytorch_ms": rebuild_ms, "rebuild_with_inference_ms": rebuild_infer_ms,
        "load_over_switch": load_ms / switch_ms, "rebuild_over_switch": rebuild_ms / switch_ms,
        "memory_mib": memory, "pte_mib": sizes,
        "portfolio_over_dense": memory["compacted portfolio"]["VmRSS"] / memory["one dense model"]["VmRSS"],
        "uncompacted_over_compacted": memory["uncompacted portfolio"]["VmRSS"] / memory["compacted portfolio"]["VmRSS"],
    }, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2:])
    else:
        main()
