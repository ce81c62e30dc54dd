"""``locmoe train`` in a batch job (issue 30): under a pipe it prints one line per logging interval instead of
progress-bar redraws, and closes with the final validation loss; W&B (offline, no network) gets the same
scalars as tensorboard; a job asking for W&B without it installed ends in one line naming the extra."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from tests.training.log_files import TINY_JOB, tb_scalars, tiny_corpus, wandb_history
from tests.training.runs import ROOT, losses, train

HAS_WANDB = importlib.util.find_spec("wandb") is not None
STEPS, LOG_EVERY, EVAL_EVERY = 6, 2, 4


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """One 6-step run whose stdout and stderr are pipes, the progress bar left on (the default): logging every
    2 steps, validation at 4 and 6, tensorboard and (when installed) W&B offline."""
    tmp = tmp_path_factory.mktemp("piped")
    out = tmp / "run"
    sets = [*TINY_JOB, tiny_corpus(tmp), f"train.steps={STEPS}", f"logging.log_every={LOG_EVERY}"]
    sets += [f"train.eval_every={EVAL_EVERY}", "logging.progress=true", "logging.tensorboard=true"]
    env = {}
    if HAS_WANDB:
        sets += ["logging.wandb.project=locmoe-test", "logging.wandb.mode=offline"]
        # offline and self-contained: no network, no settings or cache in the user's home
        env = {"WANDB_MODE": "offline", "WANDB_DISABLED": "", "WANDB_API_KEY": ""}
        env.update({k: str(tmp / "wandb_home") for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")})
    return out, train(out, *sets, env=env)


def test_a_piped_run_prints_one_line_per_interval_and_the_final_validation_loss(piped_run):
    out, proc = piped_run
    assert "\r" not in proc.stdout + proc.stderr  # no progress-bar redraws in a log file
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert [int(re.match(r"step +(\d+)/", ln).group(1)) for ln in lines] == [2, 4, 6]
    val = losses(out, "val_loss")
    loss = losses(out, "loss")
    for line, step in zip(lines, (2, 4, 6)):
        assert f"loss {loss[step]:.4f}" in line and "tok/s" in line and "ETA" in line
        assert ("val " in line) == (step in val)
    assert "MFU" not in proc.stdout  # CPU: no peak to compare with
    final = proc.stdout.splitlines()[-1]
    assert final.startswith(f"tiny_cpu: done: validation loss {val[STEPS]:.4f} at step {STEPS}"), final
    assert str(out / "checkpoints" / f"step_{STEPS:08d}") in final


@pytest.mark.skipif(not HAS_WANDB, reason="the wandb extra is not installed (pip install 'locmoe[wandb]')")
def test_wandb_offline_run_holds_the_same_scalars_as_tensorboard(piped_run):
    out, _ = piped_run
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list((out / "wandb").rglob("*"))
    history = wandb_history(runs[0])
    tb = tb_scalars(out / "tb")
    assert sorted(history) == [2, 4, 6]
    by_step: dict[int, dict[str, float]] = {}
    for tag, steps in tb.items():
        for step, value in steps.items():
            by_step.setdefault(step, {})[tag] = value
    assert sorted(by_step) == [2, 4, 6]
    for step in by_step:
        assert sorted(history[step]) == sorted(by_step[step])
        # tensorboard stores float32, W&B the float64 the loop computed: equal to float32 rounding
        assert history[step] == pytest.approx(by_step[step], rel=1e-6)
    assert "val/val_loss" in history[6] and "train/loss" in history[2]


def test_wandb_missing_is_one_line_naming_the_extra(tmp_path):
    out = tmp_path / "run"
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "hide_frameworks"), str(ROOT)]),
        "LOCMOE_HIDE": "wandb",
    }
    proc = train(out, *TINY_JOB, tiny_corpus(tmp_path), "logging.wandb.project=p", env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "logging.wandb.project" in lines[0] and "pip install 'locmoe[wandb]'" in lines[0]
    assert not Path(out).exists()  # refused before anything was written


@pytest.mark.skipif(not HAS_WANDB, reason="the wandb extra is not installed (pip install 'locmoe[wandb]')")
def test_a_run_wandb_refuses_is_one_clear_error(tmp_path, monkeypatch):
    from locmoe.config import load_config
    from locmoe.training.wandb_log import WandbFailed, WandbWriter

    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(None, ["logging.wandb.project=a/b", "logging.wandb.mode=offline"])
    with pytest.raises(WandbFailed, match=r"^logging.wandb: W&B refused to start a run \(Invalid project name"):
        WandbWriter(cfg, tmp_path)
