"""Two-rank training runs that lose a rank: start them (bare launch, torchrun, msrun), stop or kill one rank
mid-run, and record when the survivor ended, with what exit code and what it printed.

Linux only (worker pids and exit states come from /proc). The runs train a small model for far more steps than
they get to run; ``parallel.timeout_s`` is ``TIMEOUT_S``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.training.runs import QUIET, ROOT, SMALL_MODEL, TINY, free_port

TIMEOUT_S = 20
SMALL = [
    *SMALL_MODEL,
    "train.steps=100000",
    "logging.log_every=1",
    "train.ckpt_every=0",
    "parallel.nodes=2",
    "parallel.devices_per_node=1",
    f"parallel.timeout_s={TIMEOUT_S}",
]


@dataclass
class Outcome:
    """What became of the survivor after ``signal_name`` hit rank ``victim``."""

    launcher: str
    signal_name: str
    victim: int
    ended_after_s: float = float("nan")  # from the signal to the survivor's exit
    exit_code: int | None = None
    stderr: str = ""  # the survivor's own stderr (msrun: its worker log)
    launcher_err: str = ""  # the launcher's stderr
    scheduler_log: str = ""  # msrun: its scheduler's log (the scheduler runs `locmoe train` too)
    notes: list = field(default_factory=list)


def run(launcher: str, signal_name: str, victim: int, base: Path) -> Outcome:
    """One run: start 2 ranks, wait for 3 logged steps, signal ``victim``, wait for the other to end."""
    out, logs = base / "run", base / "logs"
    logs.mkdir(parents=True)
    started = time.monotonic()
    job = _start(launcher, out, logs)
    outcome, ended = Outcome(launcher, signal_name, victim), False
    try:
        _wait_for_steps(out, 3, job, timeout=240)
        outcome.notes.append(f"3 steps after {time.monotonic() - started:.0f} s")
        pids = _worker_pids(launcher, job)
        survivor = pids[1 - victim]
        t0 = time.monotonic()
        os.kill(pids[victim], getattr(signal, signal_name))
        while _alive(survivor, job) and time.monotonic() - t0 < TIMEOUT_S + 90:
            time.sleep(0.2)
        outcome.ended_after_s = time.monotonic() - t0
        ended = not _alive(survivor, job)
        _kill(pids[victim])  # a stopped rank stays stopped: end it so the launcher returns
    finally:
        for p in job.values():  # the launcher's report follows; otherwise (a failed run) no waiting
            if p.poll() is None:
                _wait_or_kill(p, 60 if ended else 0)
        outcome.notes.append(f"all ended after {time.monotonic() - started:.0f} s")
    launcher_err = logs / "launcher.err"
    outcome.launcher_err = launcher_err.read_text(errors="replace") if launcher_err.exists() else ""
    outcome.stderr, outcome.exit_code = _survivor_report(launcher, job, logs, 1 - victim, survivor, outcome)
    return outcome


def _start(launcher: str, out: Path, logs: Path) -> dict:
    sets = [a for o in (*QUIET, *SMALL, f"train.out_dir={out}") for a in ("--set", o)]
    python_dir = str(Path(sys.executable).parent)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        GLOG_v="3",
        PATH=python_dir + os.pathsep + os.environ.get("PATH", ""),
    )
    job_args = ["train", str(TINY), *sets]
    port = free_port()
    if launcher == "bare":
        return {
            r: subprocess.Popen(
                [sys.executable, "-m", "locmoe", *job_args],
                cwd=ROOT,
                env=dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE="2"),
                stdout=open(logs / f"rank{r}.out", "w"),
                stderr=open(logs / f"rank{r}.err", "w"),
            )
            for r in range(2)
        }
    if launcher == "torchrun":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "--log-dir",
            str(logs / "torchrun"),
            "--redirects",
            "3",
            "-m",
            "locmoe",
            *job_args,
        ]
    else:
        job_args += ["--set", "parallel.backend=mindspore"]
        cmd = [
            str(Path(python_dir) / "msrun"),
            "--worker_num",
            "2",
            "--local_worker_num",
            "2",
            "--master_port",
            str(port),
            "--log_dir",
            str(logs / "msrun"),
            "--join",
            "True",
            str(ROOT / "scripts" / "locmoe_entry.py"),
            *job_args,
        ]
    return {
        "launcher": subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=open(logs / "launcher.out", "w"), stderr=open(logs / "launcher.err", "w")
        )
    }


def _wait_for_steps(out: Path, steps: int, job: dict, timeout: float) -> None:
    metrics, t0 = out / "metrics.jsonl", time.monotonic()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        dead = [p.args for p in job.values() if p.poll() is not None]
        assert not dead and time.monotonic() - t0 < timeout, f"the run did not reach step {steps}: {dead}"
        time.sleep(0.3)


def _worker_pids(launcher: str, job: dict) -> dict:
    """rank -> pid of the training processes (the launcher's children, by their RANK / RANK_ID)."""
    if launcher == "bare":
        return {r: p.pid for r, p in job.items()}
    key = "RANK_ID" if launcher == "msrun" else "RANK"
    pids = {}
    for pid in _children(job["launcher"].pid):
        env, cmdline = _environ(pid), _cmdline(pid)  # (msrun's `tail -f` of a log has RANK_ID too)
        if key in env and env.get("MS_ROLE") != "MS_SCHED" and "locmoe" in cmdline:
            pids[int(env[key])] = pid
    assert sorted(pids) == [0, 1], pids
    return pids


def _children(ppid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                found.append(int(entry))
    return found


def _environ(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int, job: dict) -> bool:
    for p in job.values():
        if p.pid == pid:
            return p.poll() is None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_or_kill(p: subprocess.Popen, timeout: float) -> None:
    """Wait for a launcher (or rank); then SIGKILL it and everything it started (msrun's workers run in
    sessions of their own and would outlive it)."""
    try:
        p.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    tree, todo = [], [p.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(_children(pid))
    for pid in tree:
        _kill(pid)
    p.wait()


def _survivor_report(launcher: str, job: dict, logs: Path, rank: int, pid: int, outcome: Outcome) -> tuple:
    """(the survivor's stderr, its exit code): from its own files and the launcher's report."""
    if launcher == "bare":
        return (logs / f"rank{rank}.err").read_text(errors="replace"), job[rank].returncode
    if launcher == "torchrun":
        err = "".join(p.read_text(errors="replace") for p in (logs / "torchrun").glob(f"*/attempt_0/{rank}/stderr.log"))
        # torchrun's failure report: "rank : R (local_rank: R)" then "exitcode : N (pid: P)"
        found = re.search(rf"rank\s*:\s*{rank} \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", outcome.launcher_err)
        return err, int(found.group(1)) if found else None
    outcome.scheduler_log = (logs / "msrun" / "scheduler.log").read_text(errors="replace")
    err = (logs / "msrun" / f"worker_{rank}.log").read_text(errors="replace")
    found = re.search(rf"Worker process {pid} exit with exception\. Error code: (-?\d+)", outcome.launcher_err)
    return err, int(found.group(1)) if found else None
