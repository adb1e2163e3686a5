"""Real IMP runs: what compaction buys on models trained with the callbacks, round by round.

For each model (a VGG-style net and a CIFAR-style ResNet-18, on scikit-learn's real digits) and each
pruning criterion (plain global magnitude, DNNShifter's; the structure-aware
:class:`~lightning_shifter.criteria.ChannelAwareMagnitude`, whose filters coupled by residual
additions share one strength; and the same scored per layer, ``coupled=False``), one real
``Trainer.fit`` runs
:class:`~lightning_shifter.IterativeMagnitudePruning` with rewinding down to ``--final-density``
(default 0.5%) and :class:`~lightning_shifter.Compaction` saves every round (``keep="all"``, so that
every round is measured). Then, per round:

- density and validation accuracy (the sparse model's; the compacted one's is identical, checked);
- parameters and MACs of the exact compaction, as ratios dense / compacted;
- host ExecuTorch (XNNPACK fp32, 1 thread) latency of the compacted program and of the sparse
  program as trained (same zeros, dense shapes), timed alternately in this process;
- the original DNNShifter rule on the same masks (batch-norm fused, one pass of forward-dead
  filters): its parameter ratio, counted like ours with batch-norms fused;
- ``compact()`` time (median of 3);
- whether the default keep policy (``"pareto"``) keeps the round.

The headline of a run (marked ``*``) is the smallest variant within 1 accuracy point of the best
round (also reported: within 1 point of the dense round 0, never stricter); "rounds to pay" is the
first round with a variant >= 5.14x smaller than dense within that point (DNNShifter's headline). Resident memory of the whole default-policy portfolio, preloaded
(host ExecuTorch and the native runner when it can be built), is compared with the same rounds
uncompacted and with one dense program.

Run: ``python bench/real_runs.py [--models vgg,resnet18] [--criteria magnitude,channel,channel-per-layer]
[--alpha 3] [--rounds 15] [--final-density 0.005] [--epochs-per-round 3] [--accelerator auto]
[--update-readme]``; writes ``bench/results/real_runs.json`` (and, with ``--update-readme``, the
table into README.md). About 17 minutes on 2 cores with the default two criteria (the README's table
adds ``channel-per-layer``: 29 minutes); the training part runs on a GPU with ``--accelerator gpu``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.fx.experimental.optimization import fuse

sys.path.insert(0, str(Path(__file__).parent))
from switching import rss_growth_mib, warm_program  # noqa: E402  (bench/switching.py)

from lightning_shifter import Compaction, IterativeMagnitudePruning  # noqa: E402
from lightning_shifter.compaction import compact  # noqa: E402
from lightning_shifter.compaction.original import compact_original  # noqa: E402
from lightning_shifter.compaction.report import count_params  # noqa: E402
from lightning_shifter.criteria import ChannelAwareMagnitude, magnitude  # noqa: E402
from lightning_shifter.demo import DigitsDataModule  # noqa: E402
from lightning_shifter.export import export_portfolio  # noqa: E402
from lightning_shifter.portfolio import Portfolio, Variant, keep_decision  # noqa: E402
from lightning_shifter.batches import example_input  # noqa: E402
from lightning_shifter.runtime import load_method  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADLINE_SIZE = 5.14  # DNNShifter: compacted variants up to 5.14x smaller ...
HEADLINE_SPEED = 1.67  # ... and 1.67x faster, at unchanged accuracy
README_START, README_END = "<!-- real-runs:start -->", "<!-- real-runs:end -->"


# ---------------------------------------------------------------------------------------- models
def vgg(width: int = 64) -> nn.Module:
    """VGG-style: conv-bn-relu at width, width, pool, 2w, 2w, pool, 4w; global pooling; linear."""
    layers: list[nn.Module] = []
    channels = 1
    for out in (width, width, "pool", 2 * width, 2 * width, "pool", 4 * width):
        if out == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def resnet18() -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max pooling), 1 input channel."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


MODELS = {"vgg": vgg, "resnet18": resnet18}


class Classifier(pl.LightningModule):
    """A plain LightningModule: SGD with momentum, cosine LR over one round (every round rewinds it)."""

    def __init__(self, net: nn.Module, epochs_per_round: int, lr: float = 0.05) -> None:
        super().__init__()
        self.net, self.epochs_per_round, self.lr = net, epochs_per_round, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs_per_round)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class SparseSnapshots(pl.Callback):
    """Keeps a CPU copy of each round's trained sparse weights (a round-end listener of IMP)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_pruning_round_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: Any) -> None:
        self.states[record.round] = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}


CRITERIA = {
    "magnitude": lambda alpha: magnitude,
    "channel": lambda alpha: ChannelAwareMagnitude(alpha=alpha),
    "channel-per-layer": lambda alpha: ChannelAwareMagnitude(alpha=alpha, coupled=False),
}


# ---------------------------------------------------------------------------------------- one run
def train(model_name: str, criterion_name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pl.seed_everything(args.seed, verbose=False)
    criterion = CRITERIA[criterion_name](args.alpha)
    imp = IterativeMagnitudePruning(rounds=args.rounds, final_density=args.final_density,
                                    epochs_per_round=args.epochs_per_round, rewind_step=args.rewind_step,
                                    criterion=criterion, summary_file=None, verbose=False)
    snapshots = SparseSnapshots()
    shape = (1, 1, args.image_size, args.image_size)
    portfolio_dir = work / f"{model_name}-{criterion_name}"
    trainer = pl.Trainer(
        max_epochs=imp.epochs_needed, accelerator=args.accelerator, devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[imp, Compaction(portfolio_dir, example_input_shape=shape, keep="all"),
                                           snapshots],
    )
    start = time.perf_counter()
    trainer.fit(Classifier(MODELS[model_name](), args.epochs_per_round),
                datamodule=DigitsDataModule(seed=args.seed, image_size=args.image_size))
    return {"portfolio": portfolio_dir, "records": imp.records, "states": snapshots.states,
            "fit_s": time.perf_counter() - start, "shape": shape}


def sparse_twin(run: dict[str, Any], model_name: str, work: Path) -> Portfolio:
    """The same rounds as ``run``'s portfolio, uncompacted (the sparse models as trained)."""
    shape = run["shape"]
    twin = Portfolio.create(work / f"{run['portfolio'].name}-sparse", shape)
    example = torch.zeros(shape)
    for record in run["records"]:
        net = _sparse_net(model_name, run["states"][record.round])
        program = torch.export.export(net, (example,))
        name = f"round-{record.round:02d}"
        entry = twin.write_file(name, "pt2", lambda f: torch.export.save(program, f))
        twin.put_variant(Variant(name, record.round, record.density, count_params(net), 0, files={"pt2": entry}))
    return twin


def _sparse_net(model_name: str, state: dict[str, torch.Tensor]) -> nn.Module:
    net = MODELS[model_name]()
    net.load_state_dict(state)
    return net.eval()


def _fused_params(module: nn.Module) -> int:
    """Parameters once batch-norms are fused into the convolutions before them (as the original rule counts)."""
    return count_params(fuse(copy.deepcopy(module).eval()))


def time_programs(paths: dict[str, Path], shape: tuple[int, ...], rounds: int, runs: int) -> dict[str, float]:
    """p50 (ms) of each program, timed in alternating blocks (each leading in turn) so that machine
    load and cache effects hit all alike."""
    x = [example_input(shape)]
    methods = {kind: load_method(path)[0] for kind, path in paths.items()}
    samples: dict[str, list[float]] = {kind: [] for kind in methods}
    for method in methods.values():
        for _ in range(5):
            method.execute(x)
    kinds = list(methods)
    for block in range(rounds):
        for kind in kinds[block % len(kinds):] + kinds[:block % len(kinds)]:  # each program leads in turn
            method = methods[kind]
            for _ in range(runs):
                start = time.perf_counter()
                method.execute(x)
                samples[kind].append((time.perf_counter() - start) * 1e3)
    return {kind: statistics.median(s) for kind, s in samples.items()}


def measure(model_name: str, criterion_name: str, run: dict[str, Any], args: argparse.Namespace,
            work: Path, console: Console) -> dict[str, Any]:
    shape, records = run["shape"], run["records"]
    portfolio_dir = run["portfolio"]
    with console.status(f"{model_name}/{criterion_name}: exporting {len(records)} compacted and sparse programs"):
        start = time.perf_counter()
        twin = sparse_twin(run, model_name, work)
        for root in (portfolio_dir, twin.root):
            report = export_portfolio(root, ("fp32",), measure=False)
            if report.failed:
                raise RuntimeError(f"export failed for {[p.name for p in report.failed]} of {root}")
        export_s = time.perf_counter() - start
    portfolio, twin = Portfolio.open(portfolio_dir), Portfolio.open(twin.root)
    example = torch.zeros(shape)
    dense = portfolio.variants[0]
    dense_fused = _fused_params(_sparse_net(model_name, run["states"][0]))
    rows, kept = [], []
    for variant, record in zip(portfolio.variants, records, strict=True):
        sparse = _sparse_net(model_name, run["states"][record.round])
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            result = compact(sparse, (example,))
            timings.append((time.perf_counter() - start) * 1e3)
        original = compact_original(sparse, example)
        latency = time_programs({"compacted": portfolio.file_path(variant.name, "fp32"),
                                 "sparse": twin.file_path(variant.name, "fp32"),
                                 "dense": twin.file_path(dense.name, "fp32")}, shape, args.timing_rounds, args.timing_runs)
        if not variant.metrics["val_acc_compacted"] == variant.metrics["val_acc_sparse"]:
            raise RuntimeError(f"{variant.name}: compacted accuracy differs from the sparse model's")
        decision = keep_decision(kept, variant, "pareto")
        kept = [v for v in kept if v.name not in decision.replaces] + ([variant] if decision.keep else [])
        rows.append({
            "round": record.round, "density": record.density, "accuracy": variant.metrics["val_acc_compacted"],
            "params": variant.params, "macs": variant.macs,
            "size_x": dense.params / variant.params, "macs_x": dense.macs / variant.macs,
            "compacted_ms": latency["compacted"], "sparse_ms": latency["sparse"],
            "dense_ms": latency["dense"], "speedup": latency["sparse"] / latency["compacted"],
            "speedup_vs_dense_program": latency["dense"] / latency["compacted"],
            "original_size_x": dense_fused / count_params(original),
            "ours_fused_size_x": dense_fused / _fused_params(result.module),
            "compaction_ms": statistics.median(timings), "exactness_error": variant.exactness_error,
        })
    dense_ms = statistics.median(r["dense_ms"] for r in rows)
    for row in rows:
        row["kept_by_default"] = any(v.round == row["round"] for v in kept)
    dense_acc, best_acc = rows[0]["accuracy"], max(r["accuracy"] for r in rows)

    def smallest_within(reference: float) -> tuple[dict[str, Any], int | None]:
        close = [r for r in rows if r["accuracy"] >= reference - 0.01]
        paying = [r for r in close if r["size_x"] >= HEADLINE_SIZE]
        return max(close, key=lambda r: (r["size_x"], r["accuracy"])), (paying[0]["round"] if paying else None)

    headline, rounds_to_pay = smallest_within(best_acc)
    headline_vs_dense, rounds_to_pay_vs_dense = smallest_within(dense_acc)
    memory = portfolio_memory(portfolio, twin, [v.name for v in kept], shape, console)
    return {
        "model": model_name, "criterion": criterion_name, "alpha": args.alpha if criterion_name != "magnitude" else 0,
        "fit_s": run["fit_s"], "export_s": export_s, "rows": rows,
        "dense": {"params": dense.params, "macs": dense.macs, "accuracy": dense_acc, "fp32_ms": dense_ms},
        "best_accuracy": best_acc,
        "headline_round": headline["round"], "rounds_to_pay": rounds_to_pay,
        "headline_round_vs_dense": headline_vs_dense["round"], "rounds_to_pay_vs_dense": rounds_to_pay_vs_dense,
        "same_size_rounds_kept_by_all": len(rows) - len({r["params"] for r in rows}),
        "kept_by_default": [v.name for v in kept],
        "memory": memory,
    }


def portfolio_memory(portfolio: Portfolio, twin: Portfolio, names: list[str], shape: tuple[int, ...],
                     console: Console) -> dict[str, Any]:
    """Resident memory of all ``names`` preloaded: compacted, the same rounds uncompacted, one dense program."""
    dense = "round-00"
    warm = warm_program(shape, twin.root)
    host = {
        "compacted_portfolio": rss_growth_mib([portfolio.file_path(n, "fp32") for n in names], shape, warm),
        "uncompacted_portfolio": rss_growth_mib([twin.file_path(n, "fp32") for n in names], shape, warm),
        "one_dense_program": rss_growth_mib([twin.file_path(dense, "fp32")], shape, warm),
    }
    # the native runner: its whole resident set serving these programs (a fixed ~10 MB is the runner)
    memory: dict[str, Any] = {"variants": names, "host_mib": host}
    try:
        from lightning_shifter.device import LocalDevice, RunnerSession, find_runner_build

        with tempfile.TemporaryDirectory() as tmp:
            device = LocalDevice(Path(tmp), device_id="host-native")
            build = find_runner_build(device.abi)

            def rss_kb(root: Path, variants: list[str]) -> int:
                session = RunnerSession(device, str(build.executable), str(root), "fp32", variants=variants)
                try:
                    return int(session.stats()["rss_kb"])
                finally:
                    session.close()

            memory["runner_kib"] = {
                "compacted_portfolio": rss_kb(portfolio.root, names),
                "uncompacted_portfolio": rss_kb(twin.root, names),
                "one_dense_program": rss_kb(twin.root, [dense]),
            }
    except Exception as err:  # the runner is optional here: say why it is missing
        memory["runner_unavailable"] = f"{type(err).__name__}: {err}"
        console.print(f"[yellow]native runner memory not measured:[/yellow] {memory['runner_unavailable']}")
    return memory


# ---------------------------------------------------------------------------------------- output
def round_table(result: dict[str, Any]) -> Table:
    title = (f"{result['model']}, {result['criterion']}"
             + (f" (alpha {result['alpha']})" if result["alpha"] else "")
             + f": dense {result['dense']['params']:,} params, {result['dense']['fp32_ms']:.3f} ms fp32")
    table = Table(title=title)
    for column in ("round", "density", "val acc", "params x", "MACs x", "fp32 ms compacted / sparse / dense",
                   "speedup vs sparse / dense", "original rule x", "compact ms", "kept"):
        table.add_column(column, justify="right")
    for r in result["rows"]:
        mark = "*" if r["round"] == result["headline_round"] else ""
        table.add_row(f"{mark}{r['round']}", f"{r['density']:.4f}", f"{100 * r['accuracy']:.1f}%",
                      f"{r['size_x']:.2f}x", f"{r['macs_x']:.2f}x",
                      f"{r['compacted_ms']:.3f} / {r['sparse_ms']:.3f} / {r['dense_ms']:.3f}",
                      f"{r['speedup']:.2f}x / {r['speedup_vs_dense_program']:.2f}x", f"{r['original_size_x']:.2f}x",
                      f"{r['compaction_ms']:.0f}",
                      "yes" if r["kept_by_default"] else "")
    return table


def summary_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for result in results:
        head = next(r for r in result["rows"] if r["round"] == result["headline_round"])
        host = result["memory"]["host_mib"]
        ratio = host["uncompacted_portfolio"]["VmRSS"] / host["compacted_portfolio"]["VmRSS"]
        vs_dense = host["compacted_portfolio"]["VmRSS"] / host["one_dense_program"]["VmRSS"]
        criterion = result["criterion"] + (f" a={result['alpha']:g}" if result["alpha"] else "")
        rows.append([
            result["model"], criterion, f"{result['dense']['params']:,} / {100 * result['dense']['accuracy']:.1f}% "
            f"({100 * result['best_accuracy']:.1f}%)",
            f"{head['round']}: {head['size_x']:.2f}x smaller, {head['speedup_vs_dense_program']:.2f}x faster, "
            f"{100 * head['accuracy']:.1f}% (original rule {head['original_size_x']:.2f}x)",
            "-" if result["rounds_to_pay"] is None else str(result["rounds_to_pay"]),
            f"{len(result['kept_by_default'])} of {len(result['rows'])}",
            f"host {ratio:.2f}x lower ({vs_dense:.2f}x one dense)" + _runner_memory(result["memory"]),
        ])
    return rows


def _runner_memory(memory: dict[str, Any]) -> str:
    runner = memory.get("runner_kib")
    if runner is None:
        return "; runner not measured"
    ratio = runner["uncompacted_portfolio"] / runner["compacted_portfolio"]
    return f"; runner {ratio:.2f}x lower ({runner['compacted_portfolio'] / runner['one_dense_program']:.2f}x one dense)"


SUMMARY_COLUMNS = ("model", "criterion", "dense params / acc (best round)", "headline: smallest within 1 pt of the best round",
                   f"rounds to >= {HEADLINE_SIZE}x", "variants kept (pareto)", "memory of the kept variants vs the same uncompacted")


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Measured by `bench/real_runs.py --criteria {args.criteria}` ({args.rounds} rounds to density {args.final_density}, "
        f"{args.epochs_per_round} epochs each, rewind to step {args.rewind_step}, digits at "
        f"{args.image_size}x{args.image_size}, seed {args.seed}, {os.cpu_count()} cores, accelerator "
        f"{args.accelerator}); latencies are host ExecuTorch fp32, 1 thread, compacted vs the dense program.",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
        *("| " + " | ".join(row) + " |" for row in summary_rows(results)),
        "",
        "Per round (params and latency vs dense; `*` the headline round):",
        "",
    ]
    for result in results:
        criterion = result["criterion"] + (f" a={result['alpha']:g}" if result["alpha"] else "")
        lines += [f"<details><summary>{result['model']}, {criterion}</summary>", "",
                  "| round | density | val acc | params x | MACs x | fp32 ms | speedup | original rule x | kept |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            mark = "**" if r["round"] == result["headline_round"] else ""
            lines.append(f"| {mark}{r['round']}{mark} | {r['density']:.4f} | {100 * r['accuracy']:.1f}% | "
                         f"{r['size_x']:.2f}x | {r['macs_x']:.2f}x | {r['compacted_ms']:.3f} | "
                         f"{r['speedup_vs_dense_program']:.2f}x | {r['original_size_x']:.2f}x | "
                         f"{'yes' if r['kept_by_default'] else ''} |")
        lines += ["", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def update_readme(text: str) -> None:
    readme = REPO / "README.md"
    content = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"README.md has no {README_START} ... {README_END} section to write the table into")
    readme.write_text(pattern.sub(lambda _: f"{README_START}\n{text}{README_END}", content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,resnet18")
    parser.add_argument("--criteria", default="magnitude,channel",
                        help="magnitude (plain, the paper's), channel (ChannelAwareMagnitude), channel-per-layer "
                             "(the same with coupled=False)")
    parser.add_argument("--alpha", type=float, default=3.0, help="ChannelAwareMagnitude's alpha (default: 3)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--final-density", type=float, default=0.005)
    parser.add_argument("--epochs-per-round", type=int, default=3)
    parser.add_argument("--rewind-step", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator for training (cpu, gpu, auto)")
    parser.add_argument("--timing-rounds", type=int, default=6)
    parser.add_argument("--timing-runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (ExecuTorch uses 1)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "real_runs.json")
    parser.add_argument("--update-readme", action="store_true", help="write the summary table into README.md")
    args = parser.parse_args()
    models, criteria = args.models.split(","), args.criteria.split(",")
    for name in models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; use {sorted(MODELS)}")
    for name in criteria:
        if name not in CRITERIA:
            parser.error(f"unknown criterion {name!r}; use {', '.join(CRITERIA)}")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    console = Console(width=max(Console().width, 160))
    work = Path(tempfile.mkdtemp(prefix="bench-real-runs-"))
    results = []
    started = time.perf_counter()
    try:
        for model_name in models:
            for criterion_name in criteria:
                with console.status(f"{model_name}/{criterion_name}: training {args.rounds + 1} rounds"):
                    run = train(model_name, criterion_name, args, work)
                result = measure(model_name, criterion_name, run, args, work, console)
                results.append(result)
                console.print(round_table(result))
                console.print(f"fit {result['fit_s']:.0f} s, export {result['export_s']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = Table(title=f"Real IMP runs, all in {time.perf_counter() - started:.0f} s")
    for column in SUMMARY_COLUMNS:
        summary.add_column(column)
    for row in summary_rows(results):
        summary.add_row(*row)
    console.print(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "seconds": time.perf_counter() - started, "results": results}, indent=2))
    if args.update_readme:
        update_readme(markdown(results, args))
        console.print("README.md: real-runs table updated")


if __name__ == "__main__":
    main()
