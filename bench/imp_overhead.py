"""Training-step overhead of IterativeMagnitudePruning vs no pruning and vs Lightning's ModelPruning.

All three run side by side in one process, interleaved (none, imp, ModelPruning, none, ...), on the
same model, data and seed. Each run trains 2 epochs; only the steps of epoch 1 are timed, when the
masks of the first pruning are active (IMP: rounds=1, epochs_per_round=1, rewind to step 0;
ModelPruning: global L1-unstructured, 20%, pruned at the end of epoch 0, lottery-ticket reset). A
step is the wall time between consecutive ``on_train_batch_start`` calls, so every callback hook,
the forward, backward, optimizer step and mask enforcement are all inside it. Figures are ratios of
median step times to the no-pruning run; absolute times are context only (shared, noisy machine).

Because end-to-end ratios on a shared 2-core machine swing by tens of percent from run to run, the
IMP run also measures its own per-step cost directly ("attributed"): the time spent inside the
callback's per-batch hooks and the post-step mask enforcement, divided by that run's step time.
Torch runs single-threaded by default here (``--threads``) to reduce interference from other load.

Usage: ``python bench/imp_overhead.py [--reps 7]``; writes ``bench/results/imp_overhead.json``.
Target (DESIGN.md section 5): IMP step time / no pruning <= 1.03.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelPruning
from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_shifter import IterativeMagnitudePruning
from lightning_shifter.demo import DigitsDataModule, DigitsResNet
from lightning_shifter.masks import apply_masks_, prunable_weights

RESULTS = Path(__file__).parent / "results" / "imp_overhead.json"
TARGET = 1.03


class StepTimer(Callback):
    """Times epoch 1: gaps between consecutive batch starts, plus the last batch's end."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if trainer.current_epoch == 1 and self._last is not None and batch_idx > 0:
            self.times.append(now - self._last)
        self._last = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == trainer.num_training_batches - 1:
            self.times.append(time.perf_counter() - self._last)


class TimedIMP(IterativeMagnitudePruning):
    """IMP that accumulates the time spent in its per-step code (batch hooks + post-step masking)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spent = 0.0

    def _timed(self, method, *args):
        start = time.perf_counter()
        method(*args)
        self.spent += time.perf_counter() - start

    def on_train_batch_start(self, *args):
        self._timed(super().on_train_batch_start, *args)

    def on_train_batch_end(self, *args):
        self._timed(super().on_train_batch_end, *args)

    def _after_optimizer_step(self, *args):
        self._timed(super()._after_optimizer_step, *args)


class AttributionReset(Callback):
    """Starts the attribution clock with epoch 1, the timed epoch."""

    def __init__(self, imp: TimedIMP) -> None:
        self.imp = imp

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.imp.spent = 0.0


def _pruning_callback(variant: str, model: nn.Module) -> list[Callback]:
    if variant == "imp":
        imp = TimedIMP(rounds=1, epochs_per_round=1, rewind_step=0, summary_file=None, verbose=False)
        return [imp, AttributionReset(imp)]
    if variant == "ModelPruning":
        layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return [ModelPruning("l1_unstructured", amount=0.2, use_global_unstructured=True, parameters_to_prune=layers,
                             verbose=0)]
    return []


def run_once(variant: str, width: int, datamodule: DigitsDataModule, batches: int) -> tuple[list[float], float]:
    """Step times of epoch 1, and (IMP only) the fraction of that epoch spent in IMP's per-step code."""
    pl.seed_everything(0, verbose=False)
    model = DigitsResNet(width=width)
    timer = StepTimer()
    callbacks = _pruning_callback(variant, model)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         limit_train_batches=batches, callbacks=[timer, *callbacks])
    trainer.fit(model, datamodule=datamodule)
    attributed = callbacks[0].spent / sum(timer.times) if variant == "imp" else 0.0
    return timer.times, attributed


def mask_cost_ms(width: int, calls: int = 50) -> float:
    """Time of one mask enforcement over all prunable weights (what runs after every step)."""
    weights = list(prunable_weights(DigitsResNet(width=width)).values())
    masks = [torch.rand_like(w).gt(0.2).to(w.dtype) for w in weights]
    apply_masks_(weights, masks)
    start = time.perf_counter()
    for _ in range(calls):
        apply_masks_(weights, masks)
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions per variant (default 9)")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64], help="DigitsResNet widths")
    parser.add_argument("--batches", type=int, default=12, help="training batches per epoch (default 12)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    datamodule = DigitsDataModule(batch_size=64)
    variants = ["none", "imp", "ModelPruning"]
    results = []
    for width in args.widths:
        params = sum(p.numel() for p in DigitsResNet(width=width).parameters())
        medians: dict[str, list[float]] = {v: [] for v in variants}
        attributed: list[float] = []
        run_once("none", width, datamodule, args.batches)  # warm-up
        for rep in range(args.reps):
            for variant in variants[rep % 3:] + variants[:rep % 3]:  # rotate the order
                times, share = run_once(variant, width, datamodule, args.batches)
                medians[variant].append(statistics.median(times))
                if variant == "imp":
                    attributed.append(share)
        base = statistics.median(medians["none"])
        for variant in variants:
            ms = statistics.median(medians[variant])
            per_rep = [m / b for m, b in zip(medians[variant], medians["none"])]
            results.append({
                "model": f"DigitsResNet(width={width})", "params": params, "variant": variant,
                "median_step_ms": ms * 1e3, "ratio_to_none": ms / base,
                "ratio_per_rep_min": min(per_rep), "ratio_per_rep_max": max(per_rep),
                "mask_enforcement_ms": mask_cost_ms(width) if variant == "imp" else None,
                "attributed_overhead": statistics.median(attributed) if variant == "imp" else None,
            })

    table = Table(title=f"IMP step-time overhead (median of {args.reps} interleaved runs; target imp <= {TARGET})")
    for column in ("width", "params", "variant", "ms/step", "ratio", "per-run ratios", "attributed", "mask ms"):
        table.add_column(column, justify="right")
    for r in results:
        imp = r["variant"] == "imp"
        table.add_row(r["model"].split("=")[1].rstrip(")"), f"{r['params']:,}", r["variant"],
                      f"{r['median_step_ms']:.2f}", f"{r['ratio_to_none']:.3f}",
                      f"{r['ratio_per_rep_min']:.2f}-{r['ratio_per_rep_max']:.2f}",
                      f"{1 + r['attributed_overhead']:.4f}" if imp else "-",
                      f"{r['mask_enforcement_ms']:.3f}" if imp else "-")
    Console(width=120).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "imp_overhead", "target_ratio": TARGET, "reps": args.reps,
        "torch": torch.__version__, "lightning": pl.__version__, "threads": args.threads, "batches": args.batches,
        "machine": platform.platform(), "results": results,
    }, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
