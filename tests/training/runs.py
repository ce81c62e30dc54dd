"""Launching ``locmoe train`` in subprocesses (one process, torchrun or msrun) and reading back metrics.jsonl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests import machine_share

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
QUIET = [
    "logging.progress=false",
    "logging.tensorboard=false",
    "export.at_end=false",
    "data.max_bytes=50000",
    "train.eval_every=0",
]
# a model small enough for MindSpore PyNative on 2 cores (~0.4 s a step in one process): 20 steps
SMALL_MODEL = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=128",
    "moe.d_expert=64",
    "data.seq_len=32",
    "model.max_seq_len=32",
    "train.batch_size=2",
]
SMALL = [
    *SMALL_MODEL,
    "train.steps=20",
    "train.warmup_steps=5",
    "logging.log_every=1",
    "train.lr=1e-3",
    "train.min_lr=1e-4",
]


def train(
    out_dir: Path,
    *overrides: str,
    nproc: int = 1,
    resume: bool = False,
    env: dict | None = None,
    config: Path = TINY,
    check: bool = True,
    launcher: str = "torchrun",
) -> subprocess.CompletedProcess:
    """``locmoe train`` in one process, or ``nproc`` processes of ``launcher`` (torchrun, or msrun on one host)."""
    sets = [a for o in (*QUIET, f"train.out_dir={out_dir}", *overrides) for a in ("--set", o)]
    python_dir = str(Path(sys.executable).parent)  # msrun starts workers with the first python on PATH
    full_env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        GLOG_v="3",
        PATH=python_dir + os.pathsep + os.environ.get("PATH", ""),
    )
    full_env.update(env or {})  # ``env`` may replace the ones above (PYTHONPATH, to hide a package)
    if nproc == 1:
        start = [sys.executable, "-m", "locmoe"]
    elif launcher == "torchrun":
        start = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "locmoe",
        ]
    else:
        start = [
            str(Path(python_dir) / "msrun"),
            "--worker_num",
            str(nproc),
            "--local_worker_num",
            str(nproc),
            "--master_port",
            str(free_port()),
            "--log_dir",
            str(Path(out_dir).parent / f"{Path(out_dir).name}_logs"),
            "--join",
            "True",
            str(ROOT / "scripts" / "locmoe_entry.py"),
        ]
    cmd = [*start, "train", str(config), *sets, *(["--resume"] if resume else [])]
    proc = machine_share.run_alone(
        cmd, alone=nproc > 1, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + worker_logs(out_dir)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_logs(out_dir: Path) -> str:
    """The tails of msrun's worker logs (empty for other launchers)."""
    log_dir = Path(out_dir).parent / f"{Path(out_dir).name}_logs"
    tails = []
    for log in sorted(log_dir.glob("worker_*.log")):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if not ln.startswith("[")]
        tails.append(f"--- {log.name}\n" + "\n".join(lines[-30:]))
    return "\n".join(tails)


def losses(out_dir: Path, key: str = "lm_loss") -> dict[int, float]:
    """step -> value; a resumed run appends, and the last record of a step wins."""
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}
