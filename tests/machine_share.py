"""The 2-core machine shared by the pytest-xdist workers: a multi-process launch (torchrun, msrun, a process
per rank) runs alone; the other tests run side by side.

Why: a 4-rank launch wants both cores. Beside one busy process, 4 msrun workers took 102 s instead of 53 (and
74 % more CPU time: ranks that wait on a collective spin); two launches side by side, 8 processes on 2 cores,
worse. So each test holds a shared lock on the machine while it runs (``pytest_runtest_protocol`` in
``tests/conftest.py``), and a launch (``with exclusive():``, in the helpers that start one) trades it for the
exclusive lock. A writer's turnstile keeps the other worker's next tests from starving a waiting launch.

flock on two files named by the run's id (``testrunuid``, the same on every worker): released by the kernel
when a worker dies. Outside xdist (``-n 0``) nothing is locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

_files: Optional[tuple[int, int]] = None  # (turnstile, machine) descriptors of this worker, once configured
_shared_held = False
_exclusive_depth = 0  # a launch helper inside another one's hold (shared_run -> train) keeps it


def configure(run_id: str) -> None:
    """Called once per xdist worker with the run's id."""
    global _files
    base = Path(tempfile.gettempdir()) / f"locmoe-tests-{run_id}"
    turnstile, machine = (
        os.open(f"{base}.{name}.lock", os.O_CREAT | os.O_RDWR, 0o600) for name in ("turnstile", "machine")
    )
    _files = (turnstile, machine)


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
