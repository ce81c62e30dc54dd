"""A stalled (SIGSTOP) or dead (SIGKILL) rank ends every surviving rank within ``parallel.timeout_s`` + 30 s with
one line naming it, exit code 2 (docs/reliability.md, "Timeouts and dead ranks").

Real runs: 2 gloo ranks training a small model under a bare launch (the store's host, rank 0, stalled and
killed) and under torchrun (rank 1 stalled and killed), and 2 MindSpore workers under msrun (rank 1 stalled),
all started at once (about a minute in all); every process group's timeout read back from 2 gloo ranks. Then the
verdict logic and the monitor's threads in one process, on a file store.
"""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from locmoe import liveness
from tests import machine_share
from tests.reliability.hang_runs import TIMEOUT_S, run
from tests.training.runs import ROOT, free_port

SCENARIOS = [
    ("bare", "SIGSTOP", 0),
    ("bare", "SIGKILL", 0),
    ("torchrun", "SIGSTOP", 1),
    ("torchrun", "SIGKILL", 1),
    ("msrun", "SIGSTOP", 1),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """Every run of this file at once (they spend most of their time waiting for a timeout)."""
    base = tmp_path_factory.mktemp("hangs")
    with machine_share.exclusive(), ThreadPoolExecutor(len(SCENARIOS) + 1) as pool:
        futures = {s: pool.submit(run, *s, base / "_".join(map(str, s))) for s in SCENARIOS}
        futures["group timeouts"] = pool.submit(_group_timeouts, 37)
        return {s: f.result() for s, f in futures.items()}


def _group_timeouts(timeout_s: int) -> list:
    """Each group's timeout as seen by each of 2 gloo ranks (``group_timeout_worker.py``)."""
    port, worker = free_port(), ROOT / "tests" / "reliability" / "group_timeout_worker.py"
    env = lambda r: dict(  # noqa: E731
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(r),
        WORLD_SIZE="2",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
    )
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(timeout_s)], env=env(r), stdout=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return [json.loads(out.splitlines()[-1]) for out in outs]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=["-".join(map(str, s)) for s in SCENARIOS])
def test_a_lost_rank_ends_the_survivor_with_one_line_naming_it(outcomes, scenario):
    o = outcomes[scenario]
    context = f"{scenario}: {o.stderr[-3000:]}\n--- launcher:\n{o.launcher_err[-3000:]}"
    assert o.ended_after_s <= TIMEOUT_S + 30, context
    assert o.exit_code == 2, context
    lines = [ln for ln in o.stderr.splitlines() if "RankFailure" in ln]
    assert len(lines) == 1, context
    assert lines[0].startswith("locmoe train: RankFailure: ") and f"rank {o.victim} of 2" in lines[0], context
    assert "Traceback" not in o.stderr, context
    if o.launcher != "msrun":  # MindSpore logs its own [ERROR] lines about the failed collective beside ours
        assert o.stderr.strip() == lines[0], context
    else:  # msrun's scheduler declared the worker dead too, in one line
        said = [ln for ln in o.scheduler_log.splitlines() if "RankFailure" in ln]
        assert said == [
            f"locmoe train: RankFailure: msrun worker {o.victim} stopped responding (MindSpore's "
            f"scheduler heard no heartbeat for MS_NODE_TIMEOUT = {TIMEOUT_S} s: stalled or killed)"
        ], o.scheduler_log[-2000:]


def test_every_process_group_gets_the_configured_timeout(outcomes):
    """Sub-groups too (``new_group`` defaults to 30 minutes on gloo); groups of one rank have no handle."""
    expected = {"ep": 37, "intra": None, "inter": 37, "expert_dp": None, "world": 37}
    assert outcomes["group timeouts"] == [expected, expected]


# ----------------------------------------------------------------------------- the verdict, in one process


def test_blame_names_the_silent_rank_first_then_errors_then_others_verdicts():
    now = 1000.0
    alive = lambda n: (f"{n} {now - 0.5}", None)  # noqa: E731
    first = [alive(1), ("7 970.0", None), alive(3), alive(1)]
    second = [alive(2), ("7 970.0", None), alive(4), alive(2)]
    assert liveness.blame(first, second, 0, now) == (
        "rank 1 of 4 stopped responding (no heartbeat for 30 s: stalled or killed)"
    )
    second[1] = ("7 970.0", "error: DataError: bad token id 300 in the validation split")
    assert liveness.blame(first, second, 0, now) == (
        "rank 1 of 4 ended with an error (DataError: bad token id 300 in the validation split)"
    )
    second[1] = ("7 970.0", "ended: rank 9 of 10 stopped responding")
    assert liveness.blame(first, second, 0, now) == "rank 9 of 10 stopped responding"
    second[1] = ("8 999.9", None)
    assert liveness.blame(first, second, 0, now) is None
    assert liveness.blame([(None, None)] * 2, [(None, None)] * 2, 0, now) == (
        "rank 1 of 2 stopped responding (no heartbeat at all: stalled or killed)"
    )


def test_describe_drops_gloos_source_prefix():
    err = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error: Connection reset")
    assert liveness.describe(err) == "RuntimeError: Read error: Connection reset"


class _Exits:
    """Stands in for os._exit and stderr: records the code and the line."""

    def __init__(self):
        self.read_fd, self.err_fd = os.pipe()
        self.codes, self.done = [], threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.done.set()

    def line(self) -> str:
        return os.read(self.read_fd, 4096).decode()


def _monitor(store, exits: _Exits, **kw) -> liveness.Liveness:
    return liveness.Liveness(store, 0, 2, kw.pop("timeout_s", 1.0), beat_s=0.1, exit=exits, err_fd=exits.err_fd, **kw)


def test_a_neighbour_silent_for_timeout_s_ends_the_job_and_publishes_the_verdict(tmp_path):
    store, exits = liveness.FileStore(tmp_path), _Exits()
    store.set("beat/1", f"1 {time.time()}")  # rank 1 beat once, then never again
    monitor = _monitor(store, exits).start()
    t0 = time.monotonic()
    try:
        assert exits.done.wait(10)
        assert 1.0 <= time.monotonic() - t0 <= 3.0  # timeout_s 1 s + up to a few beats of 0.1 s
        assert exits.codes[0] == 2
        assert exits.line().startswith("locmoe train: RankFailure: rank 1 of 2 stopped responding")
        assert store.get("verdict").startswith("rank 1 of 2 stopped responding")
        assert store.get("state/0").startswith("ended: rank 1 of 2")
    finally:
        monitor.leave()


def test_a_failed_collective_names_the_peer_whose_heartbeat_stopped(tmp_path):
    store, exits = liveness.FileStore(tmp_path), _Exits()
    store.set("beat/1", f"1 {time.time() - 5}")
    monitor = _monitor(store, exits, timeout_s=60.0).start()  # the neighbour watch alone would wait 60 s
    threading.Thread(target=monitor.fail, args=("RuntimeError: Connection reset by peer",), daemon=True).start()
    try:
        assert exits.done.wait(5)  # the diagnosis takes 3 beats, not timeout_s
        assert "rank 1 of 2 stopped responding (no heartbeat for 5 s" in exits.line()
    finally:
        monitor.leave()


def test_a_store_that_stops_answering_is_blamed_on_the_rank_that_hosts_it(tmp_path):
    stalled, released = threading.Event(), threading.Event()

    class Stalls(liveness.FileStore):
        def get(self, key):
            if stalled.is_set():
                released.wait()  # a TCPStore client of a SIGSTOPped server waits for good
            return super().get(key)

    store, exits = Stalls(tmp_path), _Exits()
    monitor = liveness.Liveness(
        store, 1, 2, 1.0, beat_s=0.1, exit=exits, err_fd=exits.err_fd, store_host="127.0.0.1:29500", store_rank=0
    ).start()
    store.set("beat/0", f"1 {time.time()}")
    stalled.set()
    try:
        assert exits.done.wait(10)
        assert exits.line().startswith(
            "locmoe train: RankFailure: rank 0 of 2 stopped responding (the job's store "
            "it hosts at 127.0.0.1:29500 stopped answering: no answer for 1 s"
        )
    finally:
        released.set()
        monitor.leave()


def test_leaving_marks_the_rank_so_its_watcher_moves_on(tmp_path):
    """A peer that finished (``done``) is not a failure: rank 0 keeps running past timeout_s."""
    store, exits = liveness.FileStore(tmp_path), _Exits()
    store.set("state/1", "done")
    monitor = _monitor(store, exits, timeout_s=0.5).start()
    time.sleep(1.5)
    monitor.leave("done")
    assert exits.codes == [] and store.get("state/0") == "done" and liveness.active() is None
