"""A tiny torch run (1 MoE layer, 16-token sequences, a 30 kB corpus) whose checkpoints the tests here copy,
tamper with and load; and the CLI run as a user runs it (a subprocess), for exit codes and messages."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.training.runs import QUIET, ROOT, TINY

TEXT = (
    "Checkpoints are shared between people and clusters; loading one must never run code.\n"
    "The quick brown fox jumps over the lazy dog, again and again, for the sake of a corpus.\n"
) * 180
SMALL = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "moe.d_expert=32",
    "data.seq_len=16",
    "model.max_seq_len=16",
    "train.batch_size=1",
    "train.warmup_steps=1",
    "logging.log_every=1",
    "train.ckpt_every=2",
    "moe.router.gate=dense",
]


def corpus(where: Path) -> Path:
    path = where / "corpus.txt"
    if not path.exists():
        path.write_text(TEXT)
    return path


def run_args(where: Path, *extra: str) -> list[str]:
    return [*SMALL, f"data.sources=[{{path: {corpus(where)}}}]", *extra]


def train_argv(out: Path, *extra: str) -> list[str]:
    """``train CONFIG --set ...`` of the tiny model into ``out`` (its corpus beside it)."""
    sets = [*QUIET, f"train.out_dir={out}", *run_args(out.parent, *extra)]
    return ["train", str(TINY), *[a for o in sets for a in ("--set", o)]]


def tiny_train(
    out: Path, *extra: str, flags=(), env: dict | None = None, check: bool = True, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """``locmoe train`` of the tiny model (``flags``: e.g. --resume)."""
    proc = locmoe(*train_argv(out, *extra), *flags, env=env, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def locmoe(*args, env: dict | None = None, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m locmoe ARGS`` as a user runs it."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "locmoe", *map(str, args)],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite(ckpt: Path, name: str, data: bytes) -> None:
    """Replace one file of a checkpoint and update its manifest: consistent, as a tamperer would leave it."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest, indent=2))


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a failed command prints on stderr (no traceback, no second message)."""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]
