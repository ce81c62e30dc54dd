"""Loading a checkpoint never runs code (issue 19): a checkpoint whose every non-weight file is a code-running
pickle (with a manifest that matches, as a tamperer would leave it) ends resume, convert, export, trace and
generate with one message naming the file, exit 2, and the pickle's command never runs. Format-1 (pickled)
checkpoints resume only with --trust-checkpoint, and then through torch's restricted unpickler."""

import hashlib
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from locmoe.checkpoint.directory import CheckpointError, list_checkpoints, step_dir
from tests.checkpoint.tiny import copy_run, locmoe, one_error_line, rewrite, tiny_train
from tests.training.runs import losses


class RunsCode:
    """Unpickling this runs a shell command (``os.system``): what an attacker would put in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile(marker: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    return pickle.dumps(RunsCode(marker), protocol=protocol)


def poison(ckpt: Path, marker: Path, names=None) -> list[str]:
    """Replace ``names`` (default: every file but model.safetensors and the manifest) by the pickle."""
    names = names or sorted(p.name for p in ckpt.iterdir() if p.name not in ("model.safetensors", "manifest.json"))
    for name in names:
        rewrite(ckpt, name, hostile(marker))
    return names


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("The quick brown\n")
    return p


def test_a_hostile_checkpoint_runs_no_code_in_any_command(run4, tmp_path, prompts):
    run = copy_run(run4, tmp_path / "run")
    marker = tmp_path / "PWNED"
    for _, ckpt in list_checkpoints(run):
        names = poison(ckpt, marker)
    assert {"train_state.json", "optimizer_rank0.json", "optimizer_rank0.safetensors", "rng_rank0.json"} <= set(names)
    newest = step_dir(run, 4)
    commands = {
        "resume": lambda: tiny_train(run, "train.steps=6", flags=["--resume"], check=False),
        "convert": lambda: locmoe("convert", newest, tmp_path / "converted"),
        "export": lambda: locmoe("export", newest, tmp_path / "exported"),
        "trace": lambda: locmoe("trace", newest, tmp_path / "trace.npz", "--tokens", "64"),
        "generate": lambda: locmoe("generate", newest, run4 / "router", "--prompts", prompts, "--max-new-tokens", "2"),
    }
    for what, command in commands.items():
        line = one_error_line(command())
        assert "train_state.json" in line and "is not a JSON file" in line, (what, line)
        assert not marker.exists(), f"{what} ran the pickle's code"
    assert not (tmp_path / "converted").exists() and not (tmp_path / "exported").exists()
    assert not (tmp_path / "trace.npz").exists()


@pytest.mark.parametrize(
    "name, says",
    [
        ("optimizer_rank0.json", "is not a JSON file"),
        ("optimizer_rank0.safetensors", "is not a safetensors file"),
        ("rng_rank0.json", "is not a JSON file"),
    ],
)
def test_resume_names_each_hostile_file(run4, tmp_path, name, says):
    """One file at a time, so that each reader of the resume path meets the pickle."""
    run = copy_run(run4, tmp_path / "run")
    marker = tmp_path / "PWNED"
    poison(step_dir(run, 4), marker, [name])
    line = one_error_line(tiny_train(run, "train.steps=6", flags=["--resume"], check=False))
    assert f"{name} {says}" in line and not marker.exists()
    assert not (run / ".lock").exists() and not (run / "checkpoints" / ".step_00000006.tmp").exists()


def test_a_hostile_weights_file_is_named(run4, tmp_path):
    from locmoe.export import export_checkpoint

    run = copy_run(run4, tmp_path / "run")
    poison(step_dir(run, 4), tmp_path / "PWNED", ["model.safetensors"])
    with pytest.raises(CheckpointError, match="model.safetensors is not a safetensors file"):
        export_checkpoint(step_dir(run, 4), tmp_path / "out")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- format 1 (older locmoe)


def make_format1(ckpt: Path) -> None:
    """Rewrite a format-2 torch checkpoint as locmoe wrote it before format 2: ``torch.save`` of the
    optimiser's state_dict and of the RNG states, manifest format_version 1."""
    import torch

    from backends.torch.checkpoint import load_checkpoint
    from backends.torch.distributed import init_distributed
    from backends.torch.optim import make_optimizer
    from backends.torch.train import build_model
    from locmoe.config import config_from_dict

    cfg = config_from_dict(json.loads((ckpt / "train_state.json").read_text())["config"])
    ctx = init_distributed(cfg.parallel)
    model = build_model(cfg, ctx)
    opt = make_optimizer(model, cfg.train)
    load_checkpoint(ckpt, model, opt, ctx)
    for name in ("optimizer_rank0.json", "optimizer_rank0.safetensors", "rng_rank0.json"):
        (ckpt / name).unlink()
    torch.save(opt.state_dict(), ckpt / "optimizer_rank0.pt")
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(), "cuda": None},
        ckpt / "rng_rank0.pt",
    )
    files = {}
    for name in ("model.safetensors", "train_state.json", "optimizer_rank0.pt", "rng_rank0.pt"):
        data = (ckpt / name).read_bytes()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest.update(format_version=1, files=files)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_format1_resumes_only_when_trusted_and_then_exactly(run4, tmp_path):
    new = copy_run(run4, tmp_path / "new")
    old = copy_run(run4, tmp_path / "old")
    make_format1(step_dir(old, 4))
    line = one_error_line(tiny_train(old, "train.steps=6", flags=["--resume"], check=False))
    assert "optimizer_rank0.pt is a pickle written by an older locmoe" in line and "--trust-checkpoint" in line
    tiny_train(old, "train.steps=6", flags=["--resume", "--trust-checkpoint"])
    tiny_train(new, "train.steps=6", flags=["--resume"])
    a, b = losses(new), losses(old)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert [a[s] for s in (5, 6)] == [b[s] for s in (5, 6)]  # the same state: bit-identical steps


def test_a_hostile_format1_pickle_runs_no_code_even_when_trusted(run4, tmp_path):
    """--trust-checkpoint still reads format 1 with torch's restricted unpickler (weights_only=True)."""
    run = copy_run(run4, tmp_path / "run")
    ckpt = step_dir(run, 4)
    make_format1(ckpt)
    marker = tmp_path / "PWNED"
    rewrite(ckpt, "rng_rank0.pt", hostile(marker, protocol=2))  # torch.save's protocol
    proc = locmoe("convert", ckpt, tmp_path / "conv", "--to", "torch", "--trust-checkpoint")
    line = one_error_line(proc)
    assert "rng_rank0.pt cannot be read: torch's restricted unpickler refuses it" in line and "system" in line
    assert not marker.exists()
    assert not (tmp_path / "conv").exists()


@pytest.mark.parametrize("name, says", [("manifest.json", "is not valid JSON"), ("router.safetensors", "is corrupt")])
def test_a_hostile_router_export_runs_no_code(run4, tmp_path, name, says):
    from locmoe.export import ExportError, load_router

    router = copy_run(run4 / "router", tmp_path / "router")
    marker = tmp_path / "PWNED"
    (router / name).write_bytes(hostile(marker))
    with pytest.raises(ExportError, match=f"{name} {says}"):
        load_router(router)
    assert not marker.exists()
