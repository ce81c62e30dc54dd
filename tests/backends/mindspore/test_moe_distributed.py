"""4 real MindSpore CPU workers (msrun, 2 nodes x 2 ranks) against one process holding every expert.

On CPU the all-to-alls are the AllGather-based emulation of ``backends.mindspore.collectives`` (forward and
custom backward), so this test exercises the expert-parallel path end to end: routing decisions, global
admission, hierarchical and flat dispatch, the experts, the combine and every gradient.

Tolerances (fp32): outputs, input gradients and expert-weight gradients 1e-5 absolute (in practice they are
bit-identical, except with overlap chunks, where each expert multiplies differently grouped rows: ~4e-6);
the learned gate's gradient is summed across ranks, whose summation order differs from one process's
(~3e-6 seen), so it gets the same 1e-5.
"""

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from tests import machine_share
from tests.backends import shared_moe_checks as checks
from tests.backends.mindspore import moe_cases as mc

ROOT = Path(__file__).resolve().parents[3]
TOL = checks.TOL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_logs(log_dir: Path) -> str:
    tails = []
    for log in sorted(log_dir.glob("worker_*.log")):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if not ln.startswith("[")]
        tails.append(f"--- {log.name}\n" + "\n".join(lines[-40:]))
    return "\n".join(tails)


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> dict:
    """One msrun launch running every case (and the collective checks); its JSON report."""
    tmp = tmp_path_factory.mktemp("msrun")
    out, log_dir = tmp / "report.json", tmp / "logs"
    python_dir = str(Path(sys.executable).parent)  # msrun starts workers with the first python on PATH
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        GLOG_v="3",
        PATH=python_dir + os.pathsep + os.environ.get("PATH", ""),
    )
    cmd = [
        str(Path(python_dir) / "msrun"),
        "--worker_num",
        "4",
        "--local_worker_num",
        "4",
        "--master_port",
        str(free_port()),
        "--log_dir",
        str(log_dir),
        "--join",
        "True",
        str(ROOT / "tests/backends/mindspore/dist_moe_worker.py"),
        str(out),
    ]
    proc = machine_share.run_alone(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:] + worker_logs(log_dir)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(launch) -> dict:
    return {r["name"]: r for r in launch["cases"]}


@pytest.mark.parametrize("check", ["ep", "intra", "inter", "gather", "reduce"])
def test_collective_adapter(launch, check):
    """On every rank: the uneven all-to-all on the EP, intra-node and inter-node groups (with a rank that sends
    nothing and one that receives nothing) delivers exactly the labelled rows, its gradient returns each row's
    cotangent to its sender, and it counts the logical bytes; all-gather of unequal blocks and all-reduce."""
    assert launch["collectives"][check]


def test_a_rank_without_tokens_still_joins_the_backward(launch):
    """Rank 3's experts get no row; it must still run every backward all-to-all (else the others hang)."""
    r = launch["collectives"]["rank_without_tokens"]
    assert r["rank3_rows"] == 0 and max(r["y_err"], r["gx_err"], r["gw1_err"]) <= TOL, r


@pytest.mark.parametrize("case", mc.CASES, ids=mc.case_name)
def test_expert_parallel_equals_one_process(report, case):
    r = report[mc.case_name(case)]
    checks.assert_expert_parallel_equals_one_process(r)
    assert r["grad_cross_bytes"] == r["cross_bytes_measured"], "the backward all-to-alls must mirror the forward"


def test_capacity_cases_really_drop_copies(report):
    """The kept/dropped comparison means something only if the factor cases drop copies."""
    for case in mc.CASES:
        if case["mode"] == "factor" and case["kind"] != "expert_choice":
            assert report[mc.case_name(case)]["dropped"] > 0, mc.case_name(case)


def test_hierarchical_and_flat_give_the_same_bytes_across_nodes(report):
    checks.assert_hierarchical_and_flat_give_the_same_bytes_across_nodes(report)


@pytest.mark.parametrize("mode", ["factor", "dropless"])
def test_locmoe_crosses_nodes_less_than_gshard_by_the_planned_ratio(report, mode):
    checks.assert_locmoe_crosses_nodes_less_than_gshard_by_the_planned_ratio(report, mode)
