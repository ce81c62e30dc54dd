"""Training runs that several tests read and none changes, trained once per test session.

Two tests that compare against the same run (torch's 20 small steps, say) would otherwise each pay for it; with
pytest-xdist they may sit on different workers, so the run is kept in the session's common temporary folder and
a file lock makes the second worker wait for the first one's run instead of training it again. A test that
resumes or otherwise writes into a run must train its own with ``runs.train``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from tests.training.runs import train


def session_root(tmp_path_factory) -> Path:
    """The folder every xdist worker of this session shares (each worker's basetemp is one level below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_run(root: Path, *overrides: str, nproc: int = 1, launcher: str = "torchrun") -> Path:
    """The out_dir of ``runs.train(out_dir, *overrides, nproc=, launcher=)``, trained by the first caller."""
    named = [overrides, nproc, launcher if nproc > 1 else None]  # one process starts the same under any launcher
    key = hashlib.sha1(json.dumps(named).encode()).hexdigest()[:12]
    folder = root / "shared_runs"
    folder.mkdir(exist_ok=True)
    out, done = folder / key, folder / f"{key}.done"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if train() fails
        if not done.exists():
            for leftover in (out, folder / f"{key}_logs"):  # a failed earlier attempt's (msrun writes the logs)
                shutil.rmtree(leftover, ignore_errors=True)
            train(out, *overrides, nproc=nproc, launcher=launcher)
            done.touch()
    return out
