"""Masks are identical on every rank of a 2-process CPU DDP run (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "imp_ddp.py"


@pytest.mark.slow  # two processes starting Lightning + gloo: ~35 s on 2 cores
@pytest.mark.parametrize(("criterion", "logger"), [("magnitude", "none"), ("channel", "csv")])
def test_ddp_ranks_share_masks(tmp_path, criterion, logger):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), criterion, logger], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["rounds"] == ranks[1]["rounds"] == [0, 1, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["kept"] == ranks[1]["kept"]
    assert ranks[0]["enforced"] and ranks[1]["enforced"]
    # with a logger, in its folder: every rank asked trainer.log_dir (a collective call) at each round's end
    summary = tmp_path / "logs" / "version_0" / "imp.json" if logger == "csv" else tmp_path / "imp.json"
    assert len(json.loads(summary.read_text())["rounds"]) == 3
