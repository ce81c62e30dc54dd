"""Each MindSpore routing op against its numpy twin in ``locmoe.routing`` on random inputs (exact decisions),
with ties on purpose: MindSpore documents no tie order for its sort, so the ops break ties themselves."""
import numpy as np
import pytest
from mindspore import Tensor

from backends.mindspore import routing_ops as ops
from backends.mindspore.distributed import setup_runtime
from locmoe import routing as ref

setup_runtime("CPU")


@pytest.fixture(params=range(5))
def rng(request):
    return np.random.default_rng(request.param)


def probs_of(rng, T=40, E=8, scale=2.0):
    z = rng.standard_normal((T, E)) * scale
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p.astype(np.float32)


@pytest.mark.parametrize("descending", [False, True])
def test_stable_argsort_keeps_index_order_on_ties(rng, descending):
    v = rng.integers(0, 4, (6, 50)).astype(np.float32)              # many ties
    want = np.argsort(-v if descending else v, axis=-1, kind="stable")
    np.testing.assert_array_equal(ops.stable_argsort(Tensor(v), -1, descending).asnumpy(), want)
    want0 = np.argsort(-v if descending else v, axis=0, kind="stable")
    np.testing.assert_array_equal(ops.stable_argsort(Tensor(v), 0, descending).asnumpy(), want0)
    ranks = ops.dense_rank(Tensor(v[0]), descending).asnumpy()
    np.testing.assert_array_equal(ranks, np.unique(-v[0] if descending else v[0], return_inverse=True)[1])


def test_grap_and_angles(rng):
    x = rng.standard_normal((10, 32)).astype(np.float32)
    s = ops.grap_scores(Tensor(x), 8).asnumpy()
    np.testing.assert_allclose(s, ref.grap_scores(x.astype(np.float64), 8), atol=1e-6)
    a = ops.gate_angles(Tensor(s.astype(np.float64)), Tensor(np.eye(8))).asnumpy()
    np.testing.assert_allclose(a, ref.gate_angles(s.astype(np.float64), np.eye(8)), atol=1e-12)
    zero = ops.gate_angles(Tensor(np.zeros((2, 8))), Tensor(np.eye(8))).asnumpy()
    np.testing.assert_allclose(zero, np.pi / 2)                      # a zero vector counts as orthogonal


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_and_intra_node_first(rng, ties):
    p = probs_of(rng)
    if ties:
        p = np.round(p, 1).astype(np.float32)
    local = rng.random((40, 8)) < 0.4
    np.testing.assert_array_equal(ops.top_k(Tensor(p), 3).asnumpy(), ref.top_k(p, 3)[0])
    for rho in (0.1, 0.5, 1.0):
        got = ops.intra_node_first(Tensor(p), 3, Tensor(local), rho).asnumpy()
        np.testing.assert_array_equal(got, ref.intra_node_first(p, 3, local, rho))


def test_sort_choices(rng):
    p = np.round(probs_of(rng), 1).astype(np.float32)
    idx = np.stack([rng.permutation(8)[:3] for _ in range(40)])
    np.testing.assert_array_equal(ops.sort_choices(Tensor(p), Tensor(idx)).asnumpy(), ref.sort_choices(p, idx))


def test_admission(rng):
    C, E = 200, 8
    expert = rng.integers(0, E, C)
    prob = np.round(rng.random(C), 2).astype(np.float32)       # ties on purpose
    locality = rng.integers(0, 3, C)
    capacity = rng.integers(0, 40, E)
    got = ops.admit(*(Tensor(a) for a in (expert, prob, locality, capacity))).asnumpy()
    np.testing.assert_array_equal(got, ref.admit(expert, prob, locality, capacity))
    order = ops.admission_order(Tensor(expert), Tensor(prob), Tensor(locality)).asnumpy()
    np.testing.assert_array_equal(order, ref.admission_order(expert, prob, locality))


def test_expert_choice(rng):
    p = probs_of(rng)
    p[rng.random(p.shape) < 0.2] = 0.0
    t, e = ops.expert_choice(Tensor(p), 7)
    rt, re = ref.expert_choice(p, 7)
    np.testing.assert_array_equal(t.asnumpy(), rt)
    np.testing.assert_array_equal(e.asnumpy(), re)


def test_log_softmax_with_masked_experts(rng):
    """Computed in float64 off Ascend: equal to the numpy twin to 1e-12 (MindSpore's LogSoftmax kernel is off
    by ~4e-6, which this op exists to avoid)."""
    z = rng.standard_normal((20, 8)) * 3
    z[rng.random(z.shape) < 0.3] = -np.inf
    z[:, 0] = 0.0                                                   # every row keeps one expert
    got = ops.log_softmax(Tensor(z.astype(np.float32))).asnumpy()
    want = ref.log_softmax(z.astype(np.float32).astype(np.float64))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], atol=1e-12)


def test_losses_and_weights(rng):
    p = probs_of(rng).astype(np.float64)
    idx = ref.top_k(p, 2)[0]
    local = rng.random(p.shape) < 0.3
    assert float(ops.load_balance_loss(Tensor(p), Tensor(idx), 8).asnumpy()) == pytest.approx(
        ref.load_balance_loss(p, idx, 8), abs=1e-12)
    assert float(ops.locality_loss(Tensor(np.log(p)), Tensor(local)).asnumpy()) == pytest.approx(
        ref.locality_loss(np.log(p), local), abs=1e-12)
    chosen = np.take_along_axis(p, idx, 1)
    np.testing.assert_allclose(ops.combine_weights(Tensor(chosen)).asnumpy(), ref.combine_weights(chosen))
