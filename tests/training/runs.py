"""Launching ``locmoe train`` in subprocesses (one process, or torchrun) and reading back metrics.jsonl."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
QUIET = ["logging.progress=false", "logging.tensorboard=false", "export.at_end=false", "data.max_bytes=50000",
         "train.eval_every=0"]


def train(out_dir: Path, *overrides: str, nproc: int = 1, resume: bool = False, env: dict | None = None,
          config: Path = TINY, check: bool = True) -> subprocess.CompletedProcess:
    sets = [a for o in (*QUIET, f"train.out_dir={out_dir}", *overrides) for a in ("--set", o)]
    launcher = [sys.executable, "-m", "locmoe"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "locmoe"]
    cmd = [*launcher, "train", str(config), *sets, *(["--resume"] if resume else [])]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(out_dir: Path, key: str = "lm_loss") -> dict[int, float]:
    """step -> value; a resumed run appends, and the last record of a step wins."""
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}
