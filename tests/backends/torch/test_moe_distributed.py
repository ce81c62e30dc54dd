"""4 real gloo processes (torchrun, 2 nodes x 2 ranks) against one process holding every expert.

Tolerances (fp32): outputs, input gradients and expert-weight gradients 1e-5 absolute (in practice they
are bit-identical: every row sees the same kernels); the learned gate's gradient is all-reduced across
ranks, whose summation order differs from one process's, so it gets the same 1e-5.
"""

from pathlib import Path

import pytest

from tests.backends import shared_moe_checks as checks
from tests.backends.torch import moe_cases as mc

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return mc.torchrun_report("dist_moe_worker.py", tmp_path_factory.mktemp("dist") / "report.json")


@pytest.mark.parametrize("case", mc.CASES, ids=mc.case_name)
def test_expert_parallel_equals_one_process(report, case):
    r = report[mc.case_name(case)]
    checks.assert_expert_parallel_equals_one_process(r)


def test_hierarchical_and_flat_give_the_same_bytes_across_nodes(report):
    checks.assert_hierarchical_and_flat_give_the_same_bytes_across_nodes(report)


@pytest.mark.parametrize("mode", ["factor", "dropless"])
def test_locmoe_crosses_nodes_less_than_gshard_by_the_planned_ratio(report, mode):
    checks.assert_locmoe_crosses_nodes_less_than_gshard_by_the_planned_ratio(report, mode)
