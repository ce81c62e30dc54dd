"""The 2-core machine shared by the pytest-xdist workers: a multi-process launch (torchrun, msrun, a process
per rank) runs alone; the other tests run side by side.

Why: a 4-rank launch wants both cores. Beside one busy process, 4 msrun workers took 102 s instead of 53 (and
74 % more CPU time: ranks that wait on a collective spin); two launches side by side, 8 processes on 2 cores,
worse. So each test holds a shared lock on the machine while it runs (``pytest_runtest_protocol`` in
``tests/conftest.py``), and a launch (``with exclusive():``, in the helpers that start one) trades it for the
exclusive lock. A writer's turnstile keeps the other worker's next tests from starving a waiting launch.

flock on two files named by the run's id (``testrunuid``, the same on every worker): released by the kernel
when a worker dies, removed by the controller when the session ends. Outside xdist (``-n 0``) nothing is
locked. ``LOCMOE_TEST_LAUNCH_LOG=FILE`` logs each exclusive hold (:func:`launch_logged`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

_files: Optional[tuple[int, int]] = None  # (turnstile, machine) descriptors of this worker, once configured
_shared_held = False
_exclusive_depth = 0  # a launch helper inside another one's hold (shared_run -> train) keeps it


def configure(run_id: str) -> None:
    """Called once per xdist worker with the run's id."""
    global _files
    turnstile, machine = (os.open(path, os.O_CREAT | os.O_RDWR, 0o600) for path in _lock_files(run_id))
    _files = (turnstile, machine)


def remove_lock_files(run_id: str) -> None:
    """Called by the xdist controller when the session ends (the workers have exited)."""
    for path in _lock_files(run_id):
        path.unlink(missing_ok=True)


def _lock_files(run_id: str) -> tuple[Path, Path]:
    base = Path(tempfile.gettempdir()) / f"locmoe-tests-{run_id}"
    return Path(f"{base}.turnstile.lock"), Path(f"{base}.machine.lock")


def _through_turnstile(mode: int) -> None:
    assert _files is not None
    turnstile, machine = _files
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    try:
        fcntl.flock(machine, mode)
    finally:
        fcntl.flock(turnstile, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared() -> Iterator[None]:
    """A test's hold on the machine (beside the other worker's tests, not beside a launch)."""
    global _shared_held
    if _files is None:
        yield
        return
    _through_turnstile(fcntl.LOCK_SH)
    _shared_held = True
    try:
        yield
    finally:
        _shared_held = False
        fcntl.flock(_files[1], fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """The machine to this launch alone: the test's shared hold is given up while it runs and taken back after
    (given up before queueing at the turnstile: two workers each holding a shared lock and queueing for the
    exclusive one would otherwise wait for each other)."""
    global _shared_held, _exclusive_depth
    if _files is None or _exclusive_depth:
        yield
        return
    was_shared = _shared_held
    if was_shared:
        fcntl.flock(_files[1], fcntl.LOCK_UN)
        _shared_held = False
    _through_turnstile(fcntl.LOCK_EX)
    _exclusive_depth += 1
    try:
        with launch_logged():
            yield
    finally:
        _exclusive_depth -= 1
        fcntl.flock(_files[1], fcntl.LOCK_UN)
        if was_shared:
            _through_turnstile(fcntl.LOCK_SH)
            _shared_held = True


def run_alone(cmd: list, alone: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)``, holding the machine alone when ``alone`` (a multi-process launch)."""
    with exclusive() if alone else contextlib.nullcontext():
        return subprocess.run(cmd, **kwargs)


@contextlib.contextmanager
def launch_logged() -> Iterator[None]:
    """With ``LOCMOE_TEST_LAUNCH_LOG=FILE``: a JSON line per exclusive hold (the test, wall and the reaped
    children's CPU seconds), to find where the suite's time goes."""
    log = os.environ.get("LOCMOE_TEST_LAUNCH_LOG")
    if not log:
        yield
        return
    wall, cpu = time.monotonic(), _children_cpu()
    try:
        yield
    finally:
        row = {
            "test": os.environ.get("PYTEST_CURRENT_TEST", "?"),
            "wall_s": round(time.monotonic() - wall, 1),
            "cpu_s": round(_children_cpu() - cpu, 1),
        }
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
