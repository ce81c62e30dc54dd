"""Pretraining with the MindSpore backend: msrun expert parallelism (4 CPU workers as 2 nodes x 2) equals one
process, the same run as torch, crash + exact resume, checkpoint conversion both ways, the CLI run with its
router export, and bad inputs.

A small model keeps this file near two minutes on 2 cores (MindSpore PyNative on CPU runs ~0.4 s per step of
this model in one process, ~3 s under msrun with 4 workers on 2 cores).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from locmoe.checkpoint.directory import latest, list_checkpoints, step_dir, temp_dir
from locmoe.export import load_router
from tests.training.runs import ROOT, SMALL, losses, train

MS = [*SMALL, "parallel.backend=mindspore"]
# runs other files read too (the ``shared_run`` fixture trains each once a session): torch's 20 steps, and 4
# msrun workers with checkpoints at 10 and 20, test_sharded_adamw.py's unsharded EP = world run
TORCH = [*SMALL, "train.ckpt_every=0"]
MSRUN_FOUR = [*MS, "train.ckpt_every=10", "parallel.shard=none"]


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """One MindSpore process emulating 2 nodes x 2 devices, 20 steps, checkpoints at 10 and 20."""
    out = tmp_path_factory.mktemp("ms") / "one"
    train(out, *MS, "train.ckpt_every=10")
    return out


def test_msrun_expert_parallel_training_equals_one_process(one, shared_run):
    """4 msrun workers (2 nodes x 2 from the config, the all-to-alls emulated with AllGather on CPU) against
    one process holding every expert, same global batch. Tolerance 1e-4 on every step's loss (measured
    ~1.5e-5 with 2 MoE layers: the ranks sum the gradients in another order than the one process)."""
    four = shared_run(*MSRUN_FOUR, nproc=4, launcher="msrun")
    a, b = losses(one), losses(four)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
    assert losses(four, "cross_node_fraction") == pytest.approx(losses(one, "cross_node_fraction"))


def test_mindspore_training_equals_torch(one, shared_run):
    """Same seed → same weights (locmoe.model_spec.initial_value) → the same 20 steps in both frameworks within
    1e-4 (measured ~2e-6: fp32 kernels differ in summation order)."""
    a, b = losses(one), losses(shared_run(*TORCH))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4


def test_kill_during_checkpoint_then_resume_reproduces_the_run(one, tmp_path):
    crashed = tmp_path / "crashed"
    common = [*MS, "train.ckpt_every=3"]
    proc = train(crashed, *common, env={"LOCMOE_FAULT_INJECT": "kill_during_checkpoint:6"}, check=False)
    assert proc.returncode == -9
    assert [s for s, _ in list_checkpoints(crashed)] == [3] and temp_dir(crashed, 6).is_dir()
    train(crashed, *common, resume=True)
    assert not temp_dir(crashed, 6).exists()
    a, b = losses(one), losses(crashed)
    assert max(abs(a[s] - b[s]) for s in range(4, 21)) <= 1e-6  # fp32 CPU, same process layout


def convert(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locmoe", "convert", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def test_convert_to_torch_continues_the_run_and_converts_back_exactly(one, tmp_path):
    """MindSpore step 10 → torch: torch resumes and its steps 11-20 match the MindSpore run (1e-4, as
    above); → MindSpore again: weights, AdamW moments and RNG state come back bit for bit."""
    src = step_dir(one, 10)
    assert convert(src, tmp_path / "pt").returncode == 0
    train(tmp_path / "pt", *SMALL, "train.ckpt_every=0", resume=True)
    a, b = losses(one), losses(tmp_path / "pt")
    assert sorted(b) == list(range(11, 21)) and max(abs(a[s] - b[s]) for s in b) <= 1e-4
    proc = convert(step_dir(tmp_path / "pt", 10), tmp_path / "back", "--to", "mindspore")
    assert proc.returncode == 0, proc.stderr
    back = step_dir(tmp_path / "back", 10)
    for name in ("model.safetensors", "rng_rank0.json"):
        assert (back / name).read_bytes() == (src / name).read_bytes(), name
    from backends.mindspore.checkpoint import read_optimizer

    x, y = read_optimizer(src, 0), read_optimizer(back, 0)
    assert x["step"] == y["step"] == 10 and sorted(x["exp_avg"]) == sorted(y["exp_avg"])
    for key in ("exp_avg", "exp_avg_sq"):
        for n in x[key]:
            np.testing.assert_array_equal(x[key][n], y[key][n])
    assert json.loads((back / "train_state.json").read_text())["backend"] == "mindspore"


def test_convert_errors(one, tmp_path):
    proc = convert(step_dir(one, 20), tmp_path / "x", "--to", "mindspore")
    assert proc.returncode == 2 and "ConvertError" in proc.stderr and "is already a mindspore checkpoint" in proc.stderr
    proc = convert(tmp_path / "nothing", tmp_path / "y")
    assert proc.returncode == 2 and "CheckpointError" in proc.stderr
    proc = convert(step_dir(one, 20), one)
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr


def test_resuming_a_torch_checkpoint_needs_conversion(tmp_path):
    out = tmp_path / "out"
    train(out, *SMALL, "train.steps=2", "train.warmup_steps=1")
    proc = train(out, *MS, "train.steps=4", "train.warmup_steps=1", resume=True, check=False)
    assert proc.returncode == 2
    assert "was written by the torch backend and this run uses mindspore" in proc.stderr
    assert "locmoe convert" in proc.stderr


def test_cli_trains_and_exports_with_the_tiny_config(tmp_path):
    """``locmoe train configs/tiny_cpu.yaml --set parallel.backend=mindspore``, its own sizes, a short run."""
    out = tmp_path / "run"
    train(
        out,
        "parallel.backend=mindspore",
        "train.steps=3",
        "train.warmup_steps=1",
        "train.eval_every=3",
        "train.eval_batches=1",
        "logging.log_every=1",
        "logging.tensorboard=true",
        "export.at_end=true",
        "moe.router.gate=dense",
        "moe.capacity.mode=bound",
    )
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert np.isfinite(losses(out, "val_loss")[3])
    ckpt = latest(out)
    assert json.loads((ckpt / "train_state.json").read_text())["backend"] == "mindspore"
    router = load_router(out / "router")
    m = router.manifest
    assert (m.router_kind, m.gate, m.num_experts, m.moe_layers) == ("locmoe", "dense", 8, [1, 2, 3])
    assert m.source["backend"] == "mindspore"
    weights = load_file(str(ckpt / "model.safetensors"))
    for i in m.moe_layers:
        gate = f"layers.{i}.moe.router.gate_weight"
        np.testing.assert_array_equal(router.layer_tensor(i, "gate_weight"), weights[gate])
        assert np.isfinite(router.layer_tensor(i, "angle_ema")).all()


def test_missing_data_path_is_refused_before_any_output(tmp_path):
    out = tmp_path / "out"
    proc = train(out, *MS, f"data.sources=[{{path: {tmp_path}/nope.txt}}]", check=False)
    assert proc.returncode == 2 and f"DataError: data source {tmp_path}/nope.txt does not exist" in proc.stderr
    assert not out.exists()


def test_a_missing_mindspore_is_a_clear_error_naming_the_extra(monkeypatch):
    import backends

    monkeypatch.setitem(sys.modules, "mindspore", None)  # what `import mindspore` sees when absent
    with pytest.raises(backends.BackendUnavailable, match=r"pip install 'locmoe\[mindspore\]'"):
        backends.get("mindspore")
