"""The heartbeat's TCPStore client, run as a child process of the rank (``backends.torch.liveness.TCPStoreKV``).

Why a process: when the store's host dies with a request in flight, c10d logs the failure with a C++ stack trace
on the process's stderr before it raises, and torch has no switch for that log at run time (only
``TORCH_CPP_LOG_LEVEL`` before import, which would silence every c10 warning of the job). Here that stderr is
ours: the rank reads the failure as one reply and prints its one RankFailure line alone.

Protocol: one JSON request per line on stdin, ``[op, *args]``; one JSON reply per line on stdout,
``{"ok": value}`` or ``{"error": text}``; ``ready`` first, once connected. Ends at the end of stdin (the rank
closed it or died), not at SIGTERM or SIGINT. It imports only the standard library and torch: it runs as a script.
"""

from __future__ import annotations

import datetime
import json
import signal
import sys


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


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
