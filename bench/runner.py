"""Native runner benchmark: start-up, latency, memory, and preloaded switch vs reload from storage.

Builds the host runner and a real portfolio of three conv nets (tests/runner_build.py), then
measures everything side by side in one run on this machine: ratios are the result, absolute
times are context. Prints a rich table and writes bench/results/runner.json.

    .venv/bin/python mobile/bench_runner.py [--widths 32,64,128] [--runs 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from runner_build import build_runner, make_portfolio, pattern_input  # noqa: E402


def session(binary: Path, directory: Path, requests: list[dict], *options: str) -> list[dict]:
    lines = "".join(json.dumps(r) + "\n" for r in requests + [{"cmd": "quit"}])
    result = subprocess.run(
        [str(binary), "--portfolio", str(directory), *options],
        input=lines, capture_output=True, text=True, check=True, timeout=600,
    )
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    failures = [a for a in answers if a.get("ok") is False]
    if failures:
        raise RuntimeError(f"runner errors: {failures}")
    return answers


def python_runtime_p50_ms(pte: Path, runs: int) -> float:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(pte)).load_method("forward")
    x = pattern_input()
    for _ in range(10):
        method.execute([x])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        method.execute([x])
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="32,64,128", help="channel widths of the variants")
    parser.add_argument("--runs", type=int, default=500, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=1, help="ExecuTorch thread pool size")
    args = parser.parse_args()

    start = time.perf_counter()
    binary = build_runner("host")
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        portfolio = make_portfolio(Path(tmp) / "portfolio", tuple(int(w) for w in args.widths.split(",")), int8_variants=0)
        names = list(portfolio.models)
        threads = ("--threads", str(args.threads))
        requests = []
        for name in names:
            requests += [
                {"cmd": "bench", "variant": name, "warmup": 20, "runs": args.runs},
                {"cmd": "bench_reload", "variant": name, "runs": 20},
            ]
        answers = session(binary, portfolio.directory, requests + [{"cmd": "stats"}], *threads)
        ready, stats = answers[0], answers[-2]
        single = session(binary, portfolio.directory, [{"cmd": "stats"}], *threads, "--variants", names[0])[1]
        python_p50 = {name: python_runtime_p50_ms(portfolio.pte(name), args.runs) for name in names}

    rows = []
    for index, name in enumerate(names):
        bench, reload = answers[1 + 2 * index], answers[2 + 2 * index]
        rows.append(
            {
                "variant": name,
                "bytes": ready["variants"][name]["bytes"],
                "verify_ms": ready["variants"][name]["verify_ms"],
                "load_ms": bench["load_ms"],
                "first_infer_ms": bench["first_infer_ms"],
                "p50_ms": bench["p50_ms"],
                "p90_ms": bench["p90_ms"],
                "p99_ms": bench["p99_ms"],
                "python_runtime_p50_ms": round(python_p50[name], 4),
                "native_vs_python_p50": round(python_p50[name] / bench["p50_ms"], 2),
                "reload_p50_ms": reload["load_p50_ms"],
                "reload_first_infer_p50_ms": reload["first_infer_p50_ms"],
                "switch_us": reload["switch_us"],
                "reload_vs_switch": round(reload["load_p50_ms"] * 1e3 / reload["switch_us"]),
            }
        )
    result = {
        "machine_note": "shared 2-core CI machine; compare ratios, not absolute times",
        "threads": ready["threads"],
        "runner_build_s": round(build_s, 2),
        "startup_ms": ready["startup_ms"],
        "variants": rows,
        "peak_rss_kb_all_variants": stats["peak_rss_kb"],
        "peak_rss_kb_largest_only": single["peak_rss_kb"],
        "memory_all_vs_largest": round(stats["peak_rss_kb"] / single["peak_rss_kb"], 3),
    }

    table = Table(title=f"shifter_runner, {len(names)} variants, {ready['threads']} thread(s), {args.runs} runs")
    for column in ("variant", "bytes", "load ms", "1st infer ms", "p50 ms", "p99 ms", "py p50 ms",
                   "native speedup", "reload ms", "switch us", "reload/switch"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["variant"], str(row["bytes"]), f"{row['load_ms']:.3f}", f"{row['first_infer_ms']:.3f}",
            f"{row['p50_ms']:.4f}", f"{row['p99_ms']:.4f}", f"{row['python_runtime_p50_ms']:.4f}",
            f"{row['native_vs_python_p50']:.1f}x", f"{row['reload_p50_ms']:.3f}", f"{row['switch_us']:.4f}",
            f"{row['reload_vs_switch']:,}x",
        )
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print(
        f"start-up {ready['startup_ms']:.1f} ms; peak RSS all variants {stats['peak_rss_kb']} kB vs largest alone "
        f"{single['peak_rss_kb']} kB ({result['memory_all_vs_largest']}x); build {build_s:.1f} s"
    )
    out = REPO / "bench" / "results" / "runner.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
