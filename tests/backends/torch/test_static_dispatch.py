"""``moe.dispatch_shape: static`` equals dynamic dispatch: the same outputs and gradients (fp32, 1e-5: the
batched GEMM over padded slots adds the same products per row) and the same kept copies, with and without
drops, in one process and on 4 real gloo ranks (2 nodes x 2)."""

from pathlib import Path

import numpy as np
import pytest

from locmoe.config import ConfigError, load_config
from tests.backends.torch import moe_cases as mc
from tests.static_cases import STATIC_CASES, dynamic_twin

ROOT = Path(__file__).resolve().parents[3]
TOL = 1e-5


@pytest.mark.parametrize("case", STATIC_CASES, ids=mc.case_name)
def test_static_equals_dynamic_in_one_process(case):
    *_, y, gx, grads, m = mc.single_process_reference(case)
    *_, y_ref, gx_ref, grads_ref, m_ref = mc.single_process_reference(dynamic_twin(case))
    np.testing.assert_allclose(y, y_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(gx, gx_ref, atol=TOL, rtol=0)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], atol=TOL, rtol=0, err_msg=name)
    assert np.array_equal(m.kept.numpy(), m_ref.kept.numpy())
    assert m.summary()["dropped_fraction"] == m_ref.summary()["dropped_fraction"]


def test_the_cases_cover_drops_and_no_drops():
    dropped = [mc.single_process_reference(c)[-1].summary()["dropped_fraction"] for c in STATIC_CASES[:2]]
    assert dropped[0] > 0 and dropped[1] == 0


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
