"""Heartbeats of a job's ranks: a stalled or dead rank ends every other rank with one line naming it.

Framework-free: a backend hands over a key-value :class:`Store` (torch: its own client of the job's c10d
TCPStore; MindSpore: :class:`FileStore` in the run directory) and calls :meth:`Liveness.fail` when a collective
raises. Each rank runs two daemon threads and adds nothing to the training step:

* **beat** (every ``beat_s``): bumps this rank's counter in the store, reads the job's verdict and watches one
  neighbour (the next rank still in the job). A neighbour silent for ``timeout_s``, or one that ended with an
  error, ends the job: the verdict goes to the store, so every rank stops with the same sentence.
* **watchdog** (no I/O): the store's host may itself be stalled, and a TCPStore client then waits for good, so
  this thread ends the process when the beat thread has not finished a round trip for ``timeout_s`` (a few
  beats once a failure is being diagnosed), and enforces the exit once a verdict is printed.

When a collective fails (gloo raises after its timeout, or at once when a peer's socket closes) the main thread
calls :meth:`Liveness.fail`: the beat thread reads every rank's counter twice, ``diag_s`` apart, names the ranks
whose counter did not move (or that left with an error), prints one line and exits with code 2 — without
unwinding the process groups, which cannot be torn down cleanly with a peer gone. SIGTERM (torchrun stops the
survivors this way when a worker dies) takes the same path; with no rank to blame it exits 143.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from locmoe.liveness.monitor import EXIT_FAILURE, EXIT_SIGTERM, Liveness, active, beat_interval
from locmoe.liveness.store import FileStore, Store, StoreGone
from locmoe.liveness.verdict import RankFailure, blame, describe

__all__ = [
    "EXIT_FAILURE",
    "EXIT_SIGTERM",
    "FileStore",
    "Liveness",
    "RankFailure",
    "Store",
    "StoreGone",
    "active",
    "beat_interval",
    "blame",
    "describe",
    "failures_reported",
]


@contextlib.contextmanager
def failures_reported(is_comm_error: Callable[[BaseException], bool]) -> Iterator[None]:
    """Around a run: an exception that ``is_comm_error`` (a failed collective) ends this rank with one line
    naming the rank that stopped (``Liveness.fail``: exit 2, no traceback); any other exception is recorded
    in the store for the peers (``error: ...``) and goes on; a normal end leaves the job as ``done``."""
    try:
        yield
    except BaseException as err:
        monitor = active()
        if monitor is not None:
            if is_comm_error(err):
                monitor.fail(describe(err))
            monitor.leave("error: " + describe(err))
        raise
    monitor = active()
    if monitor is not None:
        monitor.leave("done")
