"""Ctrl-C and SIGTERM during ``locmoe train`` (issue 30): the step in progress ends, one line names the newest
complete checkpoint and the resume command, exit 130 / 143; ``--resume`` then continues exactly, and
tensorboard keeps the step it resumed from; ``train.save_on_signal`` checkpoints on SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from locmoe.checkpoint.directory import latest, list_checkpoints
from tests.training.log_files import TINY_JOB, tb_scalars, tiny_corpus
from tests.training.runs import QUIET, ROOT, TINY, losses, train

STEPS = 30
COMMON = [*TINY_JOB, f"train.steps={STEPS}", "logging.log_every=1", "train.ckpt_every=4", "logging.tensorboard=true"]


def signalled(out: Path, sets: list[str], signum: int, at_step: int) -> subprocess.CompletedProcess:
    """``locmoe train`` (stdout and stderr pipes) sent ``signum`` once metrics.jsonl holds step ``at_step``."""
    args = [a for o in (*QUIET, f"train.out_dir={out}", *sets) for a in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), GLOG_v="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "locmoe", "train", str(TINY), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= at_step:
            proc.send_signal(signum)
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_sigint_at_a_random_step_then_resume_continues_exactly(tmp_path):
    sets = [*COMMON, tiny_corpus(tmp_path)]
    train(tmp_path / "straight", *sets)
    at = random.Random().randint(3, STEPS - 8)
    run = tmp_path / "stopped"
    proc = signalled(run, sets, signal.SIGINT, at)
    assert proc.returncode == 130, f"SIGINT at step {at}: " + proc.stderr[-3000:]
    line = one_line(proc)
    stopped = max(losses(run))  # the step in progress when the signal came ended, logged, then the run stopped
    newest = latest(run)
    assert stopped < STEPS and newest is not None and newest.name == f"step_{stopped // 4 * 4:08d}"
    assert line.startswith(f"interrupted by SIGINT after step {stopped}: newest checkpoint {newest}; resume with: ")
    assert line.endswith("--resume") and f"train.out_dir={run}" in line
    assert not (run / ".lock").exists()  # the run directory is free for the resume

    train(run, *sets, resume=True)
    a, b = losses(tmp_path / "straight"), losses(run)
    assert sorted(b) == list(range(1, STEPS + 1))
    # the same process layout on fp32 CPU: the same numbers (the kill-and-resume test's tolerance)
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-6, f"SIGINT at step {at}"
    # tensorboard keeps every step once, the checkpoint's own step included
    tb = tb_scalars(run / "tb")["train/lm_loss"]
    assert sorted(tb) == list(range(1, STEPS + 1))
    assert all(abs(tb[s] - b[s]) <= 1e-6 * max(1.0, abs(b[s])) for s in b)  # float32 in the event file

    # a resume with nothing left to train says so and opens no writer
    events = sorted((run / "tb").iterdir())
    again = train(run, *sets, resume=True)
    assert "nothing to train" in again.stdout
    assert sorted((run / "tb").iterdir()) == events


def test_sigterm_with_save_on_signal_checkpoints_the_step(tmp_path):
    run = tmp_path / "run"
    sets = [*TINY_JOB, tiny_corpus(tmp_path), "train.steps=500", "train.ckpt_every=0", "train.save_on_signal=true"]
    proc = signalled(run, [*sets, "logging.log_every=1"], signal.SIGTERM, 3)
    assert proc.returncode == 143, proc.stderr[-3000:]
    line = one_line(proc)
    stopped = max(losses(run))
    assert [s for s, _ in list_checkpoints(run)] == [stopped]  # ckpt_every=0: only the one saved on SIGTERM
    assert line.startswith(f"interrupted by SIGTERM after step {stopped}: newest checkpoint {latest(run)}")


def test_sigint_stops_a_mindspore_run_the_same_way(tmp_path):
    run = tmp_path / "run"
    sets = [*TINY_JOB, tiny_corpus(tmp_path), "parallel.backend=mindspore", "train.steps=500", "train.ckpt_every=2"]
    proc = signalled(run, [*sets, "logging.log_every=1"], signal.SIGINT, 3)
    assert proc.returncode == 130, proc.stderr[-3000:]
    stopped = max(losses(run))
    newest = run / "checkpoints" / f"step_{stopped // 2 * 2:08d}"
    assert one_line(proc).startswith(f"interrupted by SIGINT after step {stopped}: newest checkpoint {newest}")
