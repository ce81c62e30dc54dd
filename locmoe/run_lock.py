"""One trainer per run directory: ``out_dir/.lock`` holds the pid, host and start time of the run that owns the
directory, and an exclusive ``fcntl.flock`` on it for the process's life.

The kernel releases a flock when its process dies (even by SIGKILL), so a lock file whose flock can be taken
is stale: its holder is gone, and the new run takes it over with a message. A second trainer while the first
lives is refused, naming the holder. (On a shared file system the flock is as good as the file system's
locking: NFSv4 and Lustre support it; the pid/host in the file say who held it either way.)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from locmoe.errors import LocMoEError

LOCK_FILE = ".lock"
_held: dict[Path, "RunLock"] = {}


class RunLockedError(LocMoEError):
    """Another live trainer holds the run directory."""


class RunLock:
    def __init__(self, out_dir: Path, fd: int, created_dir: bool):
        self.out_dir, self.fd, self.created_dir = out_dir, fd, created_dir

    @property
    def path(self) -> Path:
        return self.out_dir / LOCK_FILE

    def release(self, remove_dir: bool = False) -> None:
        """Drop the lock (and the run directory if this lock made it and it is empty, after a failed start)."""
        if _held.get(self.out_dir) is not self:
            return
        del _held[self.out_dir]
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        if remove_dir and self.created_dir:
            with contextlib.suppress(OSError):
                self.out_dir.rmdir()


def _holder(text: str) -> str:
    try:
        d = json.loads(text)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["started"]))
        return f"pid {d['pid']} on host {d['host']} (since {when})"
    except (ValueError, KeyError, TypeError):
        return "an unknown process (the lock file is unreadable)"


def acquire(out_dir: str | Path, message=print) -> RunLock:
    """Take the run directory's lock for this process (re-entrant within the process); RunLockedError naming
    the holder if a live process has it. Creates ``out_dir`` if needed."""
    out = Path(out_dir).absolute()
    if out in _held:
        return _held[out]
    created = not out.exists()
    if out.exists() and not out.is_dir():
        from locmoe.config import ConfigError

        raise ConfigError("train.out_dir", f"{out_dir} exists and is not a directory")
    from locmoe.atomic_io import writing

    with writing(out / LOCK_FILE, remove_partial=False):
        out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                os.close(fd)
                raise RunLockedError(
                    f"{out_dir} is in use by another trainer: {_holder(text)} holds "
                    f"{out / LOCK_FILE}; wait for it to finish or choose another "
                    "train.out_dir"
                ) from None
            if _same_file(fd, out / LOCK_FILE):
                break
            os.close(fd)  # the previous holder removed the file between our open and flock: retry
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if previous.strip():
            message(
                f"taking over the lock of {out_dir} left by a run that ended without releasing it: {_holder(previous)}"
            )
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        os.fsync(fd)
    lock = _held[out] = RunLock(out, fd, created)
    return lock


def release(out_dir: str | Path, remove_dir: bool = False) -> None:
    lock: Optional[RunLock] = _held.get(Path(out_dir).absolute())
    if lock is not None:
        lock.release(remove_dir)


def in_use(out_dir: str | Path) -> bool:
    """Whether a live process holds ``out_dir``'s lock: the kernel drops a flock when its holder dies, even by
    SIGKILL, so a lock file whose flock can be taken belongs to no one. No lock file: not in use."""
    out = Path(out_dir).absolute()
    if out in _held:
        return True
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the flock just taken
    return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (signal 0 checks without sending anything)."""
    if pid <= 0:
        return True  # 0 and negatives name process groups, not one process: never claim they are gone
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@atexit.register
def _release_all() -> None:
    """A run that ends by an exception still removes its lock file (a SIGKILL leaves it: stale, taken over)."""
    for lock in list(_held.values()):
        lock.release()
