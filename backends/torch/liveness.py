"""Liveness of a torch job (``locmoe.liveness``) on the c10d TCPStore the job already has, and the guard that
turns a failed collective into one line naming the rank that stopped.

The store is the one ``init_process_group`` rendezvoused on (``MASTER_ADDR:MASTER_PORT``: hosted by rank 0 under
a bare launch, by the agent under torchrun), through a client of our own in a child process
(``store_proxy.py``), so the heartbeat thread never shares a socket with the process group, and c10d's report
of a request the store's death cut short stays off the rank's stderr.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import socket
import subprocess
import threading
from typing import Optional

import torch.distributed as dist

from backends.torch import store_proxy
from locmoe import liveness
from locmoe.config.schema import ParallelConfig
from locmoe.parallel.topology import LaunchEnv

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
    """``locmoe.liveness.Store`` on a c10d TCPStore, its keys under ``prefix``, through a client in a child
    process (``backends/torch/store_proxy.py``: c10d logs a request that fails because the store's host died
    with a C++ stack trace on stderr, the child's stderr, not ours).

    ``alive()`` watches a second, idle socket to the server (the server keeps it open, silently): when the
    server's process dies the kernel closes it, and no request need fail to tell.
    """

    def __init__(self, host: str, port: int, timeout_s: float, prefix: str):
        # A request to a stalled server waits past the watchdog's verdict (due ``timeout_s`` after the last answer,
        # the exit a few beats later): a client timing out first would fail the beat before the verdict is due.
        self._proxy = store_proxy.fork_client(host, port, 2 * timeout_s + 60)
        self._to_proxy, self._from_proxy, self._proxy_stderr = self._proxy.stdin, self._proxy.stdout, self._proxy.stderr
        self._stderr: collections.deque = collections.deque(maxlen=20)  # its last lines, for a failed start
        self._drain = threading.Thread(target=self._drain_stderr, name="locmoe-store-client-stderr", daemon=True)
        self._drain.start()
        self._lock = threading.Lock()  # one request in flight: the heartbeat's, or leave()'s after it
        self._prefix, self.address, self._timeout_s = prefix, (host, port), timeout_s
        self._canary: Optional[socket.socket] = None

    def connect(self) -> "TCPStoreKV":
        """Wait until the client process is connected (it starts at construction: a torch import, which can
        overlap the rendezvous) and open the canary."""
        try:
            self._reply()  # "ready"
        except liveness.StoreGone as err:
            self._drain.join(5)
            raise RuntimeError(f"the liveness store client did not start ({err}): {' | '.join(self._stderr)}") from None
        self._canary = socket.create_connection(self.address, timeout=self._timeout_s)
        return self

    def alive(self) -> bool:
        assert self._canary is not None, "connect() first"
        readable, _, _ = select.select([self._canary], [], [], 0)
        if not readable:
            return True
        try:
            return self._canary.recv(1, socket.MSG_PEEK) != b""
        except OSError:  # reset by the peer
            return False

    def set(self, key: str, value: str) -> None:
        self._request("set", self._prefix + key, value)

    def get(self, key: str) -> Optional[str]:
        return self._request("get", self._prefix + key)

    def get_many(self, keys: list) -> list:
        return self._request("multi_get", [self._prefix + k for k in keys])

    def setdefault(self, key: str, value: str) -> None:
        self._request("compare_set", self._prefix + key, "", value)  # sets only a missing (or empty) key

    def close(self) -> None:
        """End the client process (it also ends by itself when this process does)."""
        with contextlib.suppress(OSError):
            self._to_proxy.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proxy.wait(5)
        if self._canary is not None:
            self._canary.close()

    def _request(self, op: str, *args):
        if not self.alive():
            raise liveness.StoreGone("the connection to it closed")
        with self._lock:
            try:
                self._to_proxy.write(json.dumps([op, *args]) + "\n")
                self._to_proxy.flush()
            except (OSError, ValueError):
                raise liveness.StoreGone("its client process ended") from None
            return self._reply()

    def _reply(self):
        line = self._from_proxy.readline()
        if not line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proxy.wait(5)
            raise liveness.StoreGone(f"its client process ended (exit {self._proxy.returncode})")
        reply = json.loads(line)
        if "error" in reply:
            raise liveness.StoreGone(reply["error"].splitlines()[0][:120])
        return reply["ok"]

    def _drain_stderr(self) -> None:
        for line in self._proxy_stderr:
            self._stderr.append(line.rstrip())


def liveness_store(parallel: ParallelConfig, env: LaunchEnv) -> Optional[TCPStoreKV]:
    """The heartbeat store's client, its process starting (call it before ``init_process_group``, so that its
    start-up overlaps the rendezvous); None where this rank gets no heartbeats."""
    if env.world_size == 1 or liveness.active() is not None:
        return None
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None  # the caller sets up the process group with another init method
    # torchrun's store outlives a restart of the workers: one namespace per attempt
    prefix = (
        f"locmoe/liveness/{os.environ.get('TORCHELASTIC_RUN_ID', 'job')}/"
        f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    )
    return TCPStoreKV(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), parallel.timeout_s, prefix)


def start_liveness(
    parallel: ParallelConfig, env: LaunchEnv, store: Optional[TCPStoreKV] = None
) -> Optional[liveness.Liveness]:
    """Heartbeats of this rank (after ``init_process_group``, before the sub-groups) on ``store``, from
    :func:`liveness_store` (made here if not given); None for one process."""
    store = store or liveness_store(parallel, env)
    if store is None:
        return liveness.active()
    host, port = store.address
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return liveness.Liveness(
        store.connect(),
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
