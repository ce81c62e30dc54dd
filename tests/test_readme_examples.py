"""Every command in the README's code blocks runs as written, made small: one after the other in one fresh
working directory (so the examples share one tiny trained run), each ``locmoe train`` with a few steps appended.

What each kind of line gets:
- ``locmoe ...``: run as written, through the installed ``locmoe`` script, with ``SMALL`` appended where the
  README's values would take minutes (training steps); it must exit 0 with no traceback.
- ``bash scripts/main.sh`` / ``bash scripts/test.sh``: the README's two main commands, run by ``.ci/run``; here
  the main job's ``locmoe train tiny_cpu`` (made small) runs first, so that every example after it runs as it
  would right after the main job (in the same runs/tiny_cpu).
- ``scripts/train_torchrun.sh`` / ``scripts/train_msrun.sh`` (the cluster block): need a second node, GPUs or
  Ascend; checked here only so far as this machine allows: the script exists and the config it names loads.
Any other line fails the test until it is given a way to run here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TRAIN_SMALL = ["train.warmup_steps=0", "logging.progress=false"]
MAIN_JOB = ["locmoe", "train", "tiny_cpu"]  # scripts/main.sh's training, into tiny_cpu's out_dir runs/tiny_cpu


def readme_commands() -> list[str]:
    """The logical lines (continuations joined) of every ```bash block in the README."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        pending = ""
        for raw in block.splitlines():
            text = pending + raw.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            if text and not text.startswith("#"):
                lines.append(text)
    return lines


def small(argv: list[str]) -> list[str]:
    """The arguments that make a README command small enough for the test suite."""
    if argv[:2] == ["locmoe", "train"]:
        steps = "3" if "--resume" in argv else "2"  # --resume: one step past the first run's 2
        return ["--set", f"train.steps={steps}", *TRAIN_SMALL]
    return []


def write_inputs(work: Path) -> None:
    """What the README's examples read besides the run they make: a corpus folder and a prompt file."""
    corpus = work / "corpus"
    corpus.mkdir()
    for i, src in enumerate(sorted((ROOT / "locmoe").glob("*.py"))[:6]):
        (corpus / f"doc{i}.txt").write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    (work / "prompts.txt").write_text("def main(\nimport numpy as\n", encoding="utf-8")


def locmoe_command() -> list[str]:
    script = Path(sys.executable).parent / "locmoe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "locmoe"]


def test_the_readme_has_the_examples_this_test_expects():
    commands = readme_commands()
    assert "bash scripts/main.sh" in " ".join(commands[:2]) and "bash scripts/test.sh" in " ".join(commands[:2])
    assert sum(c.startswith("locmoe ") for c in commands) >= 15
    assert (
        "bash scripts/main.sh" in (ROOT / ".ci" / "run").read_text()
        or "scripts/main.sh" in (ROOT / ".ci" / "run").read_text()
    )


def test_cluster_examples_name_existing_scripts_and_configs():
    from locmoe.config import load_config

    launches = [c for c in readme_commands() if c.startswith("scripts/")]
    assert launches, "the README shows how to launch on a cluster"
    for line in launches:
        argv = shlex.split(line, comments=True)
        assert os.access(ROOT / argv[0], os.X_OK), argv[0]
        assert load_config(argv[1]).name == Path(argv[1]).stem


@pytest.mark.timeout(900)
def test_every_readme_command_runs_as_written(tmp_path):
    work = tmp_path / "user"
    work.mkdir()
    write_inputs(work)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    ran = []
    for line in readme_commands():
        argv = shlex.split(line, comments=True)
        if argv[:2] == ["bash", "scripts/main.sh"]:
            argv = MAIN_JOB  # what it runs, made small (.ci/run runs the script itself)
        elif argv[0] == "bash" and argv[1] == "scripts/test.sh":
            continue  # .ci/run runs it
        if argv[0].startswith("scripts/train_"):
            continue  # the cluster block: see the test above
        assert argv[0] == "locmoe", f"README line {line!r}: teach tests/test_readme_examples.py to run it"
        full = [*locmoe_command(), *argv[1:], *small(argv)]
        out = subprocess.run(full, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (
            f"{line}\n{shlex.join(full)}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
        )
        assert "Traceback" not in out.stderr, f"{line}\n{out.stderr[-3000:]}"
        ran.append(argv[1])
    assert {"train", "convert", "export", "generate", "bench", "trace", "plan", "route-demo", "configs"} <= set(ran)
    # what the examples said they would make
    assert (work / "runs/tiny_cpu/checkpoints").is_dir() and (work / "runs/tiny_gshard/checkpoints").is_dir()
    assert (work / "runs/tiny_ms/checkpoints").is_dir() and (work / "runs/tiny_cpu_ms/checkpoints").is_dir()
    for name in ("profile.json", "trace.npz", "placement.json", "replicas.json"):
        assert (work / name).stat().st_size > 0, name
