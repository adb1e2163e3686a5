"""2-process CPU DDP run of IterativeMagnitudePruning; each rank writes a digest of its masks.

Usage: python imp_ddp.py OUT_DIR [magnitude|channel] [none|csv]. Lightning re-launches this script for rank 1.
Without a logger the per-round summary goes to OUT_DIR/imp.json; with a CSV logger to imp.json in its folder
(trainer.log_dir, which every rank must ask at once). Rank 1's weights
are perturbed before every prune, so masks computed per rank would differ: identical digests show
that rank 0's masks are broadcast.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_shifter import IterativeMagnitudePruning
from lightning_shifter.criteria import ChannelAwareMagnitude, magnitude
from lightning_shifter.demo import DigitsDataModule, DigitsResNet


class PerturbRankOne(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.global_rank == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn_like(p) * 0.05)


class Digest(Callback):
    def __init__(self, imp: IterativeMagnitudePruning, out: Path) -> None:
        self.imp, self.out = imp, out

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for name, mask in sorted({**self.imp.masks, **self.imp.norm_masks}.items()):
            digest.update(name.encode() + mask.cpu().numpy().tobytes())
        params = dict(pl_module.named_parameters())
        enforced = all(torch.count_nonzero(params[n][~m]) == 0 for n, m in self.imp.masks.items())
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "digest": digest.hexdigest(), "enforced": enforced,
            "kept": sum(int(m.sum()) for m in self.imp.masks.values()),
            "rounds": [r.round for r in self.imp.records],
        }))


def main(out: Path, criterion: str, logger: str) -> None:
    pl.seed_everything(0)
    imp = IterativeMagnitudePruning(rounds=2, epochs_per_round=1, rewind_step=2,
                                    summary_file="imp.json" if logger == "csv" else out / "imp.json", verbose=False,
                                    criterion=ChannelAwareMagnitude(alpha=2.0) if criterion == "channel" else magnitude)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3,
                         logger=CSVLogger(out, name="logs") if logger == "csv" else False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0,
                         callbacks=[PerturbRankOne(), imp, Digest(imp, out)])
    trainer.fit(DigitsResNet(width=4), datamodule=DigitsDataModule(batch_size=16))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(sys.argv[2:] + ["magnitude", "none"][len(sys.argv) - 2:]))
