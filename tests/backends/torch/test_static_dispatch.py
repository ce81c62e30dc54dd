"""``moe.dispatch_shape: static`` equals dynamic dispatch: the same outputs and gradients (fp32, 1e-5: the
batched GEMM over padded slots adds the same products per row) and the same kept copies, with and without
drops, in one process and on 4 real gloo ranks (2 nodes x 2)."""

import pytest

from locmoe.config import ConfigError, load_config
from tests.backends import shared_moe_checks as checks
from tests.backends.torch import moe_cases as mc
from tests.static_cases import STATIC_CASES, TOL

test_static_equals_dynamic_in_one_process, test_the_cases_cover_drops_and_no_drops = checks.static_one_process_tests(
    mc.single_process_reference
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return mc.torchrun_report("dist_static_worker.py", tmp_path_factory.mktemp("static") / "report.json")


@pytest.mark.parametrize("case", STATIC_CASES, ids=mc.case_name)
def test_static_expert_parallel_equals_dynamic_one_process(report, case):
    r = report[mc.case_name(case)]
    errors = {k: v for k, v in r.items() if k.endswith("_err")}
    assert all(v <= TOL for v in errors.values()), errors
    assert r["kept_equal"] and r["dropped"] == r["ref_dropped"]


@pytest.mark.parametrize(
    "override, field",
    [
        (["moe.capacity.mode=dropless"], "moe.dispatch_shape"),
        (["moe.router.kind=expert_choice"], "moe.dispatch_shape"),
        (["moe.overlap_chunks=2"], "moe.dispatch_shape"),
    ],
)
def test_static_refuses_what_it_cannot_hold(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(overrides=["moe.dispatch_shape=static", *override])
