"""Every subcommand, run as if torch (or MindSpore) were not installed: a command that needs the framework ends
with one line naming the install command that works, exit code 2, no traceback; a command that does not need
it runs. torch is hidden by ``tests/hide_frameworks/sitecustomize.py`` (a meta-path blocker on PYTHONPATH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from locmoe.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HIDE = Path(__file__).resolve().parent / "hide_frameworks"
TORCH_LINE = "torch is not installed: install it with `pip install torch==2.13.0`"
MINDSPORE_LINE = "mindspore is not installed: install it with `pip install 'locmoe[mindspore]'`"

# subcommand -> arguments that get past argument parsing; the run dir and files need not exist, because a
# command that needs the framework must say so before it reads them.
NEEDS_TORCH = {
    "train": ["tiny_cpu", "--set", "train.out_dir=out"],
    "generate": ["run", "run/router", "--prompts", "prompts.txt"],
    "convert": ["run", "run_ms", "--to", "mindspore"],
    "trace": ["run", "trace.npz"],
    "bench": ["calibrate", "--out", "profile.json"],
    "bench prefill": ["prefill", "run", "run/router"],
}
# subcommand -> (arguments, exit code): framework-free commands keep working without torch.
FRAMEWORK_FREE = {
    "configs": ([], 0),
    "route-demo": (["--tokens-per-rank", "16"], 0),
    "plan": (["deploy", "--budget", "h200=8,h100=8", "--requests", "50"], 0),
    "export": (["no_such_run", "router_out"], 2),  # a CheckpointError about the run, not about torch
    "report": (["no_such_run"], 2),
    "data": (["--help"], 0),
}


def locmoe(args: list[str], cwd: Path, hide: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HIDE), str(ROOT)]), LOCMOE_HIDE=hide)
    return subprocess.run(
        [sys.executable, "-m", "locmoe", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_every_subcommand_is_covered():
    covered = {name.split()[0] for name in (*NEEDS_TORCH, *FRAMEWORK_FREE)}
    assert set(COMMANDS) <= covered, f"add the new subcommands {sorted(set(COMMANDS) - covered)} to this test"


def test_the_blocker_hides_torch(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(HIDE), LOCMOE_HIDE="torch")
    out = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in out.stderr


@pytest.mark.parametrize("name", sorted(NEEDS_TORCH))
def test_a_command_that_needs_torch_names_the_install(name, tmp_path):
    (tmp_path / "prompts.txt").write_text("hello\n")
    out = locmoe([name.split()[0], *NEEDS_TORCH[name]], tmp_path, "torch")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and TORCH_LINE in lines[0], out.stderr
    assert lines[0].startswith(f"locmoe {name.split()[0]}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]  # nothing written


@pytest.mark.parametrize("name", sorted(n for n in FRAMEWORK_FREE if n in COMMANDS))
def test_a_framework_free_command_runs_without_torch(name, tmp_path):
    args, code = FRAMEWORK_FREE[name]
    out = locmoe([name, *args], tmp_path, "torch,mindspore")
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr and "torch" not in out.stderr


def test_mindspore_backend_names_its_extra(tmp_path):
    out = locmoe(
        ["train", "tiny_cpu", "--set", "parallel.backend=mindspore", "train.out_dir=out"], tmp_path, "mindspore"
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and MINDSPORE_LINE in lines[0], out.stderr
    assert list(tmp_path.iterdir()) == []
