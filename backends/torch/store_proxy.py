"""The heartbeat's TCPStore client, run as a child process of the rank (``backends.torch.liveness.TCPStoreKV``).

Why a process: when the store's host dies with a request in flight, c10d logs the failure with a C++ stack trace
on the process's stderr before it raises, and torch has no switch for that log at run time (only
``TORCH_CPP_LOG_LEVEL`` before import, which would silence every c10 warning of the job). Here that stderr is
ours: the rank reads the failure as one reply and prints its one RankFailure line alone.

Protocol: one JSON request per line on stdin, ``[op, *args]``; one JSON reply per line on stdout,
``{"ok": value}`` or ``{"error": text}``; ``ready`` first, once connected. Ends at the end of stdin (the rank
closed it or died), not at SIGTERM or SIGINT.

``fork_client`` starts it as a fork of the rank rather than a fresh interpreter: the rank has imported torch
already, and a fresh ``import torch`` in the child cost each rank about 3 s of CPU at start (17 % of a 4-rank
test run's CPU time on 2 cores). The fork happens before the process group and the heartbeat's threads
start, as DataLoader's workers fork after torch's import; the child then uses only its own TCPStore.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback


def _ops(store) -> dict:
    def get(key):  # None for a missing key: store.get() would wait for it
        return store.get(key).decode() if store.check([key]) else None

    return {
        "set": lambda key, value: store.set(key, value),
        "get": get,
        "multi_get": lambda keys: [v.decode() for v in store.multi_get(keys)],
        "compare_set": lambda key, expected, value: store.compare_set(key, expected, value).decode(),
    }


def serve(host: str, port: int, timeout_s: float) -> None:
    # The rank's process group gets the launcher's SIGTERM (torchrun stopping the workers) and a terminal's
    # SIGINT: the rank's watchdog still needs the store to diagnose then. This process ends with the rank.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch.distributed as dist

    store = dist.TCPStore(  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch's __all__
        host_name=host,
        port=port,
        is_master=False,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    ops = _ops(store)
    print(json.dumps({"ok": "ready"}), flush=True)
    for line in sys.stdin:
        op, *args = json.loads(line)
        try:
            reply = {"ok": ops[op](*args)}
        except Exception as err:  # noqa: BLE001 — every failure goes back to the rank, which decides
            reply = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)


class ForkedClient:
    """The forked client as the rank sees it: its stdin, stdout and stderr (text, line-buffered), ``wait`` and
    ``returncode`` as ``subprocess.Popen`` has them."""

    def __init__(self, pid: int, stdin: io.TextIOWrapper, stdout: io.TextIOWrapper, stderr: io.TextIOWrapper):
        self.pid, self.stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self.returncode: int | None = None

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"store client {self.pid}", timeout)
            else:
                time.sleep(0.01)
        return self.returncode


def fork_client(host: str, port: int, timeout_s: float) -> ForkedClient:
    """``serve`` in a forked child whose standard streams are pipes to this process (POSIX)."""
    pipes = [os.pipe() for _ in range(3)]  # (read, write) for the child's stdin, stdout, stderr
    child_ends = (pipes[0][0], pipes[1][1], pipes[2][1])
    pid = os.fork()
    if pid == 0:  # the child: its streams onto the pipes, no other inherited descriptor (Popen's close_fds)
        code = 1
        try:
            for std, fd in enumerate(child_ends):
                os.dup2(fd, std)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            streams = (open(i, mode, buffering=1, closefd=False) for i, mode in enumerate("rww"))
            sys.stdin, sys.stdout, sys.stderr = streams
            serve(host, port, timeout_s)
            code = 0
        except BaseException:  # noqa: BLE001 — the rank reads the last lines of this stderr when the start fails
            traceback.print_exc()
        finally:
            os._exit(code)  # no atexit handler or buffered file of the rank's runs here
    for fd in child_ends:
        os.close(fd)
    return ForkedClient(
        pid,
        open(pipes[0][1], "w", buffering=1),
        open(pipes[1][0], "r", buffering=1),
        open(pipes[2][0], "r", buffering=1),
    )
