"""The package as a user installs it, not editable: a fresh venv, ``pip install torch==2.13.0`` first (the README's
advice; pip takes the CPU wheel), then ``pip install <source tree>``; from another directory it lists the
shipped configs and trains one by name for two steps. Nothing is read from the checkout at run time: the
configs come from the installed ``locmoe/configs``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".git",
    ".venv",
    "runs",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    "bench_results",
    ".whl",
    ".gl",
    ".bench_data",
    "tests",
)


def copy_source(dest: Path) -> None:
    """The files a clone has (tracked, plus new files git does not ignore), without the tests."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:  # not a git checkout: everything but the usual junk
        shutil.copytree(ROOT, dest, ignore=SKIP)
        return
    for name in filter(None, listed.stdout.decode().split("\0")):
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / name)


def sh(args: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    return out


@pytest.mark.timeout(900)
def test_a_non_editable_install_trains_a_shipped_config_by_name(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    copy_source(src)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", venv], tmp_path, env)
    py, locmoe = venv / "bin" / "python", venv / "bin" / "locmoe"
    sh([py, "-m", "pip", "install", "-q", "torch==2.13.0"], tmp_path, env)
    sh([py, "-m", "pip", "install", "-q", src], tmp_path, env)
    shutil.rmtree(src)  # the installed package must not need its source

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = sh([py, "-c", "from locmoe.config.shipped import configs_dir; print(configs_dir())"], elsewhere, env)
    configs = Path(where.stdout.strip())
    assert configs.is_relative_to(venv) and configs.parts[-2:] == ("locmoe", "configs"), configs
    listing = sh([locmoe, "configs"], elsewhere, env).stdout
    assert "tiny_cpu" in listing and "routers/gshard" in listing

    sh(
        [
            locmoe,
            "train",
            "tiny_cpu",
            "--with",
            "gshard",
            "--set",
            "train.steps=2",
            "train.warmup_steps=0",
            "train.out_dir=run",
            "logging.progress=false",
        ],
        elsewhere,
        env,
    )
    steps = sorted(p.name for p in (elsewhere / "run" / "checkpoints").iterdir())
    assert steps and steps[-1].startswith("step_") and int(steps[-1].split("_")[1]) == 2
    assert (elsewhere / "run" / "router" / "manifest.json").is_file()
    frozen = sh([py, "-m", "pip", "show", "-f", "locmoe"], elsewhere, env).stdout
    assert "Editable project location" not in frozen and "locmoe/configs/tiny_cpu.yaml" in frozen
