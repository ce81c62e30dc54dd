"""Each MindSpore routing op against its numpy twin in ``locmoe.routing`` on random inputs (exact decisions),
with ties on purpose: MindSpore documents no tie order for its sort, so the ops break ties themselves."""

import numpy as np
import pytest
from mindspore import Tensor

from backends.mindspore import routing_ops as ops
from backends.mindspore.distributed import setup_runtime
from locmoe import routing as ref
from tests.backends import shared_routing_ops as shared

setup_runtime("CPU")

rng = shared.rng  # the seeded fixture (seeds 0-4)


@pytest.mark.parametrize("descending", [False, True])
def test_stable_argsort_keeps_index_order_on_ties(rng, descending):
    v = rng.integers(0, 4, (6, 50)).astype(np.float32)  # many ties
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
    np.testing.assert_allclose(zero, np.pi / 2)  # a zero vector counts as orthogonal


@pytest.mark.parametrize("k", [2, 3, 5])  # 5: past the rounds of max (a sort) and the OR-ed compares
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_and_intra_node_first(rng, ties, k):
    p = shared.probs_with_ties(rng, ties)
    local = rng.random((40, 8)) < 0.4
    np.testing.assert_array_equal(ops.top_k(Tensor(p), k).asnumpy(), ref.top_k(p, k)[0])
    for rho in (0.1, 0.5, 1.0):
        got = ops.intra_node_first(Tensor(p), k, Tensor(local), rho).asnumpy()
        np.testing.assert_array_equal(got, ref.intra_node_first(p, k, local, rho))


@pytest.mark.parametrize("shape", [(0,), (1,), (4096,), (40, 8)])
def test_inverse_permutation(rng, shape):
    order = np.argsort(rng.random(shape), axis=-1)
    got = ops.inverse_permutation(Tensor(order.astype(np.int64))).asnumpy()
    np.testing.assert_array_equal(got, np.argsort(order, axis=-1))


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_top_k_by_rounds_and_by_sort_with_ties_and_masked_experts(rng, k):
    """k <= 4 takes rounds of max, k = 5 the stable sort: both the reference's order, with ties everywhere
    (whole rows equal) and -inf entries (masked experts) that must not be taken twice."""
    p = np.round(shared.probs_of(rng), 1).astype(np.float32)
    p[:5] = 0.125  # all tied
    p[rng.random(p.shape) < 0.3] = -np.inf
    p[5:8, :] = -np.inf  # no expert left: the lowest ids, each once
    np.testing.assert_array_equal(ops.top_k(Tensor(p), k).asnumpy(), ref.top_k(p, k)[0])


def test_top_k_by_rounds_keeps_ids_valid_on_nan():
    p = np.full((3, 8), np.nan, np.float32)
    p[1, 2] = 0.5
    got = ops.top_k(Tensor(p), 2).asnumpy()
    assert ((got >= 0) & (got < 8)).all() and (got[:, 0] != got[:, 1]).all()
    assert got[1, 0] == 2


@pytest.mark.parametrize("k", [2, 3])
def test_sort_choices(rng, k):
    """k = 2 swaps pairs, k = 3 sorts: both the reference's canonical order (ties to the lower id)."""
    p = np.round(shared.probs_of(rng), 1).astype(np.float32)
    idx = np.stack([rng.permutation(8)[:k] for _ in range(40)])
    np.testing.assert_array_equal(ops.sort_choices(Tensor(p), Tensor(idx)).asnumpy(), ref.sort_choices(p, idx))


def test_admission(rng):
    expert, prob, locality = shared.check_admission(rng, lambda *a: ops.admit(*(Tensor(v) for v in a)).asnumpy())
    order = ops.admission_order(Tensor(expert), Tensor(prob), Tensor(locality)).asnumpy()
    np.testing.assert_array_equal(order, ref.admission_order(expert, prob, locality))


def test_expert_choice(rng):
    shared.check_expert_choice(rng, lambda p, c: [a.asnumpy() for a in ops.expert_choice(Tensor(p), c)])


def test_log_softmax_with_masked_experts(rng):
    """Computed in float64 off Ascend: equal to the numpy twin to 1e-12 (MindSpore's LogSoftmax kernel is off
    by ~4e-6, which this op exists to avoid)."""
    z = rng.standard_normal((20, 8)) * 3
    z[rng.random(z.shape) < 0.3] = -np.inf
    z[:, 0] = 0.0  # every row keeps one expert
    got = ops.log_softmax(Tensor(z.astype(np.float32))).asnumpy()
    want = ref.log_softmax(z.astype(np.float32).astype(np.float64))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], atol=1e-12)


def test_losses_and_weights(rng):
    shared.check_losses_and_weights(
        rng,
        lambda p, idx, E: float(ops.load_balance_loss(Tensor(p), Tensor(idx), E).asnumpy()),
        lambda p, local: float(ops.locality_loss(Tensor(np.log(p)), Tensor(local)).asnumpy()),
        lambda chosen: ops.combine_weights(Tensor(chosen)).asnumpy(),
    )


def test_load_balance_loss_per_block(rng):
    """[blocks, T, E] at once: each block's loss as the reference computes it on that block alone."""
    shared.check_load_balance_loss_per_block(
        rng, lambda p, idx, E: ops.load_balance_loss(Tensor(p), Tensor(idx), E).asnumpy()
    )


# ----------------------------------------------------------------------------- issue-14 options
from backends.mindspore import routing_extras as extras  # noqa: E402
from backends.mindspore.moe_ops import MindSporeOps  # noqa: E402
from locmoe.moe.routing import paper_gate  # noqa: E402
from locmoe.parallel.topology import ExpertPlacement, Topology  # noqa: E402


@pytest.mark.parametrize("how", ["max", "top2_sum"])
@pytest.mark.parametrize("ties", [False, True])
def test_node_limited_top_k(rng, how, ties):
    p, allowed = shared.node_limited_inputs(rng, ties)
    table = ref.node_expert_table(ExpertPlacement.round_robin(16, Topology(4, 1)))
    sel = ref.selection_scores(p, None, allowed)
    for m in (1, 2, 4):
        got = extras.node_limited_top_k(extras.selection_scores(Tensor(p), None, Tensor(allowed)), 1, m, table, how)
        np.testing.assert_array_equal(got.asnumpy(), ref.node_limited_top_k(sel, 1, m, table, how))


def test_selection_bias_and_its_update(rng):
    p = shared.probs_of(rng)
    bias = (rng.standard_normal(8) * 0.1).astype(np.float32)
    got = ops.top_k(extras.selection_scores(Tensor(p), Tensor(bias), None), 2).asnumpy()
    np.testing.assert_array_equal(got, ref.top_k(ref.selection_scores(p, bias, None), 2)[0])
    load = rng.integers(0, 30, 8)
    # float32 state: 1e-7 of a bias of ~0.1
    np.testing.assert_allclose(
        extras.update_selection_bias(bias, load, 1e-3),
        ref.update_selection_bias(bias.astype(np.float64), load, 1e-3),
        atol=1e-7,
    )


def test_paper_gate_sigmoid_and_z_loss(rng):
    s = rng.standard_normal((10, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(
        paper_gate(MindSporeOps(), Tensor(s), "relu", Tensor(b)).asnumpy(), ref.paper_gate(s, "relu", b), atol=1e-6
    )
    z = s.copy()
    z[:, 3] = -np.inf
    aff, probs, _ = extras.sigmoid_affinities(Tensor(z))
    want = ref.sigmoid(z.astype(np.float64))
    np.testing.assert_allclose(aff.asnumpy(), want, atol=1e-7)
    np.testing.assert_allclose(probs.asnumpy(), want / want.sum(1, keepdims=True), atol=1e-7)
    assert float(extras.router_z_loss(Tensor(z)).asnumpy()) == pytest.approx(
        ref.router_z_loss(z.astype(np.float64)), abs=1e-9
    )


def test_batch_locality_loss_and_cosine_deviation(rng):
    p = shared.probs_of(rng).astype(np.float64)
    local = np.zeros((40, 8), bool)
    local[:20, :4] = True  # rank 0 on node 0, rank 1 on node 1
    local[20:, 4:] = True
    ranks = np.repeat([0, 1], 20)
    got = float(extras.batch_locality_loss(Tensor(p), Tensor(local), None, 2, 0.01).asnumpy())
    assert got == pytest.approx(ref.batch_locality_loss(p, local, None, ranks, 0.01), abs=1e-12)
    x = rng.standard_normal((12, 32))
    w = ref.grap_gate_matrix(32, 8)
    np.testing.assert_allclose(
        extras.cosine_deviation(Tensor(x), Tensor(w)).asnumpy(), ref.cosine_deviation(x, w), atol=1e-12
    )
