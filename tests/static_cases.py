"""The cases of ``moe.dispatch_shape: static`` both backends' tests run: each against the same layer with
dynamic dispatch. ``capacity.factor`` 1.0 drops copies (the drops must be the same ones); factor 8 (= E/k·2)
admits every copy (the outputs must be the same); the quantile bound sizes its buffer by ``bucket``."""

import numpy as np

from tests.moe_cases_common import case

TOL = 1e-5  # fp32: the batched GEMM over padded slots adds the same products per row

STATIC = ("moe.dispatch_shape=static",)
STATIC_CASES = [
    case(kind="locmoe", mode="factor", extra=STATIC),  # some copies dropped
    case(kind="gshard", mode="factor", extra=(*STATIC, "moe.capacity.factor=8.0")),  # nothing dropped
    case(kind="locmoe", mode="bound", extra=(*STATIC, "moe.capacity.bound_rule=quantile", "moe.capacity.bucket=8")),
    case(kind="locmoe", mode="factor", dispatch="flat", extra=STATIC),
]


def dynamic_twin(c: dict) -> dict:
    """The same case with dynamic dispatch."""
    return dict(c, extra=tuple(e for e in c["extra"] if e not in STATIC))


def assert_static_equals_dynamic(reference, case: dict) -> None:
    """``reference(case)`` (a backend's ``moe_cases.single_process_reference``) gives the same outputs, input
    and weight gradients, kept copies and dropped fraction for ``case`` and its dynamic twin."""
    *_, y, gx, grads, m = reference(case)
    *_, y_ref, gx_ref, grads_ref, m_ref = reference(dynamic_twin(case))
    np.testing.assert_allclose(y, y_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(gx, gx_ref, atol=TOL, rtol=0)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], atol=TOL, rtol=0, err_msg=name)
    assert np.array_equal(m.to_host(m.kept), m_ref.to_host(m_ref.kept))
    assert m.summary()["dropped_fraction"] == m_ref.summary()["dropped_fraction"]


def dropped_fractions(reference) -> list:
    """The dropped fraction of the first two cases: some copies, and none."""
    return [reference(c)[-1].summary()["dropped_fraction"] for c in STATIC_CASES[:2]]
