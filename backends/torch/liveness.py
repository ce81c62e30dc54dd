"""Liveness of a torch job (``locmoe.liveness``) on the c10d TCPStore the job already has, and the guard that
turns a failed collective into one line naming the rank that stopped.

The store is the one ``init_process_group`` rendezvoused on (``MASTER_ADDR:MASTER_PORT``: hosted by rank 0 under
a bare launch, by the agent under torchrun), through a client of our own, so the heartbeat thread never
shares a socket with the process group.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import select
import socket
from typing import Optional

import torch.distributed as dist

from locmoe import liveness
from locmoe.config.schema import ParallelConfig
from locmoe.topology import LaunchEnv

# What gloo, NCCL and the store say when a peer is gone or a collective timed out (they raise RuntimeError).
COMM_ERROR_TEXT = (
    "gloo",
    "nccl",
    "hccl",
    "connection reset",
    "connection closed",
    "connection refused",
    "timed out",
    "broken pipe",
    "socket",
    "watchdog",
)


class TCPStoreKV:
    """``locmoe.liveness.Store`` on a c10d TCPStore, its keys under ``prefix``.

    ``alive()`` watches a second, idle socket to the server (the server keeps it open, silently): when the
    server's process dies the kernel closes it. Checking it before each operation spares us the failing
    operation itself, which c10d reports with a C++ stack trace on stderr.
    """

    def __init__(self, host: str, port: int, timeout_s: float, prefix: str):
        # A request to a stalled server waits past the watchdog's verdict (due ``timeout_s`` after the last answer,
        # the exit a few beats later): a client timing out first prints c10d's own warnings beside our one line.
        self._store = dist.TCPStore(
            host_name=host,
            port=port,
            is_master=False,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=2 * timeout_s + 60),
        )
        self._prefix = prefix
        self._canary = socket.create_connection((host, port), timeout=timeout_s)

    def alive(self) -> bool:
        readable, _, _ = select.select([self._canary], [], [], 0)
        if not readable:
            return True
        try:
            return self._canary.recv(1, socket.MSG_PEEK) != b""
        except OSError:  # reset by the peer
            return False

    def set(self, key: str, value: str) -> None:
        self._check_alive()
        self._store.set(self._prefix + key, value)

    def get(self, key: str) -> Optional[str]:
        self._check_alive()
        k = self._prefix + key
        return self._store.get(k).decode() if self._store.check([k]) else None  # get() would wait for it

    def get_many(self, keys: list) -> list:
        self._check_alive()
        return [v.decode() for v in self._store.multi_get([self._prefix + k for k in keys])]

    def setdefault(self, key: str, value: str) -> None:
        self._check_alive()
        self._store.compare_set(self._prefix + key, "", value)  # sets only a missing (or empty) key

    def _check_alive(self) -> None:
        if not self.alive():
            raise liveness.StoreGone("the connection to it closed")


def start_liveness(parallel: ParallelConfig, env: LaunchEnv) -> Optional[liveness.Liveness]:
    """Heartbeats of this rank (after ``init_process_group``, before the sub-groups); None for one process."""
    if env.world_size == 1 or liveness.active() is not None:
        return liveness.active()
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None  # the caller set up the process group with another init method
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    # torchrun's store outlives a restart of the workers: one namespace per attempt
    prefix = (
        f"locmoe/liveness/{os.environ.get('TORCHELASTIC_RUN_ID', 'job')}/"
        f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    )
    store = TCPStoreKV(host, port, parallel.timeout_s, prefix)
    return liveness.Liveness(
        store,
        env.rank,
        env.world_size,
        parallel.timeout_s,
        store_host=f"{host}:{port}",
        store_rank=None if agent else 0,
    ).start()


def is_comm_error(err: BaseException) -> bool:
    """A failed collective or store operation (a peer gone, a timeout), as opposed to a bug or bad input."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(s in text for s in COMM_ERROR_TEXT)


def rank_failures_reported() -> contextlib.AbstractContextManager:
    """``locmoe.liveness.failures_reported`` with torch's idea of a failed collective."""
    return liveness.failures_reported(is_comm_error)
