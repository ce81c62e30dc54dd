"""A diverged run never seals (or prunes in favour of) a checkpoint of non-finite weights, and stops with one
message; one trainer per run directory, a second refused naming the holder, a stale lock taken over (issue 18).
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from locmoe.checkpoint.directory import list_checkpoints, step_dir
from locmoe.errors import LocMoEError
from locmoe.training.finite import NonFiniteError
from tests.checkpoint.tiny import ROOT, copy_run, one_error_line, tiny_train, train_argv


@pytest.mark.parametrize("backend", ["torch", "mindspore"])
def test_non_finite_weights_are_never_sealed(tmp_path, backend):
    """The update of step 4 makes a weight NaN (injected where the update would): step 4 is not sealed, and
    with keep_checkpoints 1 the good step 2 is not pruned; --resume continues from it."""
    run = tmp_path / "run"
    common = ["train.steps=6", "train.keep_checkpoints=1", f"parallel.backend={backend}"]
    proc = tiny_train(run, *common, env={"LOCMOE_FAULT_INJECT": "nan_weights:4"}, check=False)
    line = one_error_line(proc)
    assert "NonFiniteError: step 4: the update made the weights non-finite" in line
    assert f"the last good checkpoint is {step_dir(run, 2)}" in line
    assert [s for s, _ in list_checkpoints(run)] == [2]
    assert not list((run / "checkpoints").glob(".*")) and not (run / ".lock").exists()
    tiny_train(run, *common, flags=["--resume"])
    assert [s for s, _ in list_checkpoints(run)] == [6]


def test_non_finite_activations_are_a_project_error(run4):
    """The MoE layer's NaN check (a weight NaN reaches the next forward pass) is one LocMoEError, not a
    traceback."""
    import json

    import torch

    from backends.torch.checkpoint import load_model_weights
    from backends.torch.distributed import init_distributed
    from backends.torch.train import build_model
    from locmoe.config import config_from_dict

    cfg = config_from_dict(json.loads((step_dir(run4, 4) / "train_state.json").read_text())["config"])
    model = build_model(cfg, init_distributed(cfg.parallel))
    load_model_weights(model, step_dir(run4, 4))
    with torch.no_grad():
        model.embed.weight.fill_(float("nan"))
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(NonFiniteError, match="non-finite values") as err:
        model(x, torch.zeros(2, dtype=torch.long))
    assert isinstance(err.value, LocMoEError)


def test_a_non_finite_loss_is_a_project_error():
    from locmoe.training.common import StepClock, step_scalars

    with pytest.raises(NonFiniteError, match="step 7: the training loss is nan"):
        step_scalars(float("nan"), 0.0, 1e-3, 1.0, 100, StepClock(6), 7)
    assert np.isfinite(step_scalars(1.0, 0.0, 1e-3, 1.0, 100, StepClock(6), 7)["loss"])


def wait_for(cond, timeout=180.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_two_trainers_are_refused_and_a_stale_lock_is_taken_over(run4, tmp_path):
    """Trainer A runs; trainer B on the same out_dir is refused naming A (pid, host) and writes nothing; A is
    SIGKILLed (its lock file stays: stale); trainer C resumes, taking the lock over with a message."""
    run = copy_run(run4, tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    a = subprocess.Popen(
        [sys.executable, "-m", "locmoe", *train_argv(run, "train.steps=100000"), "--resume"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: list_checkpoints(run)[-1][0] > 4), "trainer A did not start"
        b = tiny_train(run, "train.steps=100000", flags=["--resume"], check=False)
        line = one_error_line(b)
        assert f"is in use by another trainer: pid {a.pid} on host {socket.gethostname()}" in line
        assert "tiny_cpu:" not in b.stdout  # B never started training
        assert a.poll() is None  # A still runs
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    assert (run / ".lock").exists()  # left by the SIGKILL
    newest = list_checkpoints(run)[-1][0]
    c = tiny_train(run, f"train.steps={newest + 1}", flags=["--resume"])
    assert f"taking over the lock of {run} left by a run that ended without releasing it: pid {a.pid}" in c.stdout
    assert list_checkpoints(run)[-1][0] == newest + 1 and not (run / ".lock").exists()
