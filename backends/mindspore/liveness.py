"""Timeouts and liveness of a MindSpore job (``locmoe.liveness``), as far as MindSpore lets us.

What ``parallel.timeout_s`` sets, before ``communication.init()`` and unless the environment already does:

    MS_NODE_TIMEOUT     msrun's scheduler ends the cluster when a worker's heartbeat has been missing this long;
                        on CPU the survivors' collectives fail after it too (measured: AllGather, 8 s → 8 s)
    HCCL_EXEC_TIMEOUT   an Ascend collective waiting longer than this fails (HCCL's default: 1836 s)

MindSpore has no c10d store to borrow, so the heartbeats are files: in the temporary directory when every worker
is on this host, else in the run directory (``out_dir/.liveness/<job>``: the ranks share it for their
checkpoints anyway), the job's directory named by a random id that rank 0 all-gathers at start-up (a resumed run
never reads the beats of the last one). What it
cannot do: msrun SIGKILLs every worker within a second of one exiting with an error or a signal, so the
survivors of a *dead* worker print nothing; only msrun's own report (and its scheduler log) names it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from locmoe import liveness
from locmoe.config.schema import ParallelConfig
from locmoe.parallel.topology import LaunchEnv

TIMEOUT_ENV = ("MS_NODE_TIMEOUT", "HCCL_EXEC_TIMEOUT")
# What MindSpore's CPU (MCCL) and Ascend (HCCL) collectives raise when a peer is gone or too slow.
COMM_ERROR_TEXT = (
    "launch kernel failed",
    "allgather",
    "allreduce",
    "alltoall",
    "broadcast",
    "hccl",
    "mccl",
    "collective",
    "timed out",
    "timeout",
    "connection",
)
_run_dir: Optional[Path] = None  # set by rank_failures_reported: where the heartbeat files go


def set_timeouts(timeout_s: float) -> None:
    """``parallel.timeout_s`` → MindSpore's own timeouts (whole seconds), where the user set none."""
    for name in TIMEOUT_ENV:
        os.environ.setdefault(name, str(max(1, math.ceil(timeout_s))))


@contextlib.contextmanager
def scheduler_verdict() -> Iterator[None]:
    """msrun's scheduler runs our entry point too and stays in ``communication.init()`` for the job's life;
    when it declares a worker dead it raises there: one line naming the worker instead of its traceback."""
    try:
        yield
    except RuntimeError as err:
        found = re.search(r"worker (\d+) is the first one timed out", str(err))
        if os.environ.get("MS_ROLE") != "MS_SCHED" or found is None:
            raise
        raise liveness.RankFailure(
            f"msrun worker {found.group(1)} stopped responding (MindSpore's scheduler heard no heartbeat for "
            f"MS_NODE_TIMEOUT = {os.environ.get('MS_NODE_TIMEOUT', '?')} s: stalled or killed)"
        ) from None


def start_liveness(parallel: ParallelConfig, env: LaunchEnv) -> Optional[liveness.Liveness]:
    """Heartbeat files of this worker (a collective: every worker calls it after ``communication.init()``);
    None outside a training run (no run directory) or in one process."""
    if env.world_size == 1 or _run_dir is None or liveness.active() is not None:
        return liveness.active()
    one_host = env.local_world_size == env.world_size
    root = Path(tempfile.gettempdir()) / "locmoe-liveness" if one_host else _run_dir / ".liveness"
    store = liveness.FileStore(root / _job_id())
    return liveness.Liveness(store, env.rank, env.world_size, parallel.timeout_s, store_host=str(store.root)).start()


def _job_id() -> str:
    from mindspore import Tensor, ops

    # int32: MindSpore 2.10's CPU AllGather keeps only the low 32 bits of an int64 (measured)
    mine = Tensor(np.array([[secrets.randbits(31)]], dtype=np.int32))
    gathered = ops.AllGather()(mine)
    assert gathered is not None  # a primitive's call is typed Optional
    return f"{int(gathered.asnumpy()[0, 0]):08x}"  # rank 0's


def is_comm_error(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(s in text for s in COMM_ERROR_TEXT)


@contextlib.contextmanager
def rank_failures_reported(run_dir) -> Iterator[None]:
    """``locmoe.liveness.failures_reported`` for a run writing to ``run_dir``; after a normal end rank 0 removes
    the heartbeat files once every worker has left (if they do within ``CLEANUP_WAIT_S``)."""
    global _run_dir
    _run_dir = Path(run_dir)
    monitor = None
    with liveness.failures_reported(is_comm_error):
        yield
        monitor = liveness.active()
    if monitor is not None and monitor.rank == 0:
        _remove_when_left(monitor)


CLEANUP_WAIT_S = 10.0


def _remove_when_left(monitor: liveness.Liveness) -> None:
    store, deadline = monitor.store, time.monotonic() + CLEANUP_WAIT_S
    assert isinstance(store, liveness.FileStore)  # the store this backend starts (above)
    while not all(store.get(f"state/{r}") for r in range(monitor.world)):
        if time.monotonic() > deadline:
            return  # a worker still beats: its files stay (a few bytes in the temp dir)
        time.sleep(0.2)
    shutil.rmtree(store.root, ignore_errors=True)
