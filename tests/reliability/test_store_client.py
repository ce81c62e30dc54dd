"""The heartbeat's store client (``backends.torch.liveness.TCPStoreKV``, its c10d client in a child process):
the store's operations, and the race where the store's host dies between the canary's check and a request,
which must raise ``StoreGone`` and print nothing (c10d logs such a failure with a C++ stack trace)."""

import subprocess
import sys

import pytest

from backends.torch.liveness import TCPStoreKV
from locmoe import liveness
from tests.training.runs import free_port

HOST = """
import datetime, sys, time
import torch.distributed as dist
store = dist.TCPStore("127.0.0.1", {port}, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=60))
print("up", flush=True)
time.sleep(120)
"""


@pytest.fixture
def host():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", HOST.format(port=port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    yield proc, port
    proc.kill()
    proc.wait()


def test_the_client_sets_gets_and_sets_only_missing_keys(host):
    _, port = host
    kv = TCPStoreKV("127.0.0.1", port, 20.0, "job/0/").connect()
    kv.set("beat/0", "1 2.5")
    kv.setdefault("verdict", "")
    kv.setdefault("beat/0", "other")
    assert kv.get("beat/0") == "1 2.5"
    assert kv.get("beat/1") is None  # missing: no wait
    assert kv.get_many(["verdict", "beat/0"]) == ["", "1 2.5"]
    assert kv.alive()
    kv.close()


def test_a_request_the_hosts_death_cuts_short_raises_store_gone_and_prints_nothing(host, capfd):
    proc, port = host
    kv = TCPStoreKV("127.0.0.1", port, 20.0, "job/0/").connect()
    kv.set("beat/0", "1 2.5")
    proc.kill()
    proc.wait()
    kv.alive = lambda: True  # the race: the canary still looked open when the request went out
    with pytest.raises(liveness.StoreGone, match="Failed to recv|Broken pipe|Connection reset"):
        kv.get_many(["beat/0"])
    kv.close()
    assert capfd.readouterr().err == ""
