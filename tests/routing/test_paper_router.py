"""The papers' LocMoE options: the ReLU gate with ε, Theorem 1's capacity, the batch KL locality loss, the
balance counts of Eq. 5, and the shipped locmoe_paper.yaml."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import quad

from locmoe.config import load_config
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import (
    batch_locality_loss,
    belong_probability,
    cosine_deviation,
    grap_gate_matrix,
    kl_divergence,
    localised_distribution,
    min_capacity_fraction,
    paper_capacity,
    paper_gate,
    route,
    update_paper_delta,
)

ROUTERS = Path(__file__).resolve().parents[2] / "configs" / "routers"


# ----------------------------------------------------------------------------- Theorem 1
def direct_belong_probability(delta, d):
    """P(|cos θ| ≥ δ) for a uniform direction of R^d by quadrature of t = cos θ's density ∝ (1 − t²)^((d−3)/2)."""
    f = lambda t: (1.0 - t * t) ** ((d - 3) / 2)  # noqa: E731
    # the density concentrates in |t| ≲ 4/√d for large d: split there so that quad sees the peak
    cut = min(1.0, max(delta, 8.0 / math.sqrt(d)))
    num = (quad(f, delta, cut, limit=200)[0] if cut > delta else 0.0) + quad(f, max(cut, delta), 1.0, limit=200)[0]
    den = (
        quad(f, 0.0, min(1.0, 8.0 / math.sqrt(d)), limit=200)[0]
        + quad(f, min(1.0, 8.0 / math.sqrt(d)), 1.0, limit=200)[0]
    )
    return num / den


@pytest.mark.parametrize(
    "delta,d,n", [(0.03, 256, 16), (0.1, 64, 8), (0.3, 16, 4), (0.03, 4096, 16), (0.6, 5, 2), (0.0, 32, 8)]
)
def test_theorem1_betainc_matches_a_direct_integral(delta, d, n):
    # tolerance 1e-7 relative: quad's default accuracy (1.5e-8) on each piece
    direct = direct_belong_probability(delta, d)
    assert belong_probability(delta, d) == pytest.approx(direct, rel=1e-7)
    assert min_capacity_fraction(delta, d, n) == pytest.approx(1.0 / (n * direct), rel=1e-7)


def test_theorem1_closed_forms_and_capacity_hand_cases():
    # d = 2: the angle is uniform, P(|cos θ| ≥ δ) = (2/π)·acos δ; d = 3: cos θ is uniform on [-1, 1], 1 − δ
    assert belong_probability(0.5, 2) == pytest.approx(2 / 3, abs=1e-12)
    assert belong_probability(0.5, 3) == pytest.approx(0.5, abs=1e-12)
    assert min_capacity_fraction(0.5, 3, 4) == pytest.approx(0.5, abs=1e-12)  # 1/(4·0.5)
    assert paper_capacity(0.5, 3, 4, k=1, num_tokens=10) == 5  # ⌈0.5·10⌉
    assert paper_capacity(0.5, 2, 4, k=2, num_tokens=8) == 6  # ⌈0.375·16⌉
    # LocMoE+ Remark 7: (1/n)·exp(dδ²/(2−δ²)) = exp(2·0.25/1.75)/4 = 0.33268 → ⌈33.27⌉
    assert min_capacity_fraction(0.5, 2, 4, "exp") == pytest.approx(math.exp(0.5 / 1.75) / 4, abs=1e-12)
    assert paper_capacity(0.5, 2, 4, k=1, num_tokens=100, form="exp") == 34
    # δ = 0: every direction belongs, the balanced load k·T/n; δ = 1 (or beyond, clipped): p = 0, no drop
    assert paper_capacity(0.0, 256, 16, k=2, num_tokens=800) == 100
    assert paper_capacity(1.0, 256, 16, k=2, num_tokens=800) == 1600
    assert paper_capacity(1.7, 256, 16, k=2, num_tokens=800) == 1600


def test_theorem1_at_the_papers_delta():
    """δ = 0.03 (the paper's measurement): d = 256 gives a capacity factor 1/p = 1.58; the exp form is smaller
    (it is the theorem's lower estimate); at d = 4096 the exact bound exceeds the whole batch."""
    assert 16 * min_capacity_fraction(0.03, 256, 16) == pytest.approx(1.5819, abs=1e-4)
    assert min_capacity_fraction(0.03, 256, 16, "exp") < min_capacity_fraction(0.03, 256, 16)
    assert min_capacity_fraction(0.03, 4096, 16) > 1.0
    assert paper_capacity(0.03, 4096, 16, k=1, num_tokens=1000) == 1000


def test_cosine_deviation_in_the_token_space():
    w = grap_gate_matrix(4, 2)  # columns [½, ½, 0, 0] and [0, 0, ½, ½]
    x = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    dev = cosine_deviation(x, w)
    np.testing.assert_allclose(dev, [[1 - 1 / math.sqrt(2), 1], [0, 1], [1, 1], [2, 1]], atol=1e-12)


def test_paper_delta_schedules():
    delta, seen = np.array([0.2, 0.0, 0.4]), np.array([True, False, True])
    first = update_paper_delta(None, delta, seen, "first_batch", 0.9)
    np.testing.assert_array_equal(first, [0.4, 0.4, 0.4])  # δ_max of the first batch
    np.testing.assert_array_equal(
        update_paper_delta(first, np.full(3, 0.9), np.ones(3, bool), "first_batch", 0.9), first
    )  # then fixed
    ema = update_paper_delta(None, delta, seen, "ema", 0.9)
    np.testing.assert_array_equal(np.isnan(ema), [False, True, False])


def paper_moe(*extra, d=32):
    return load_config(
        overrides=[f"model.d_model={d}", "model.n_heads=2", "moe.num_experts=8", *extra],
        layers=[ROUTERS / "locmoe_paper.yaml"],
    ).moe


def setup(seed=0, T=64, d=32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, d)), ExpertPlacement.contiguous(8, Topology(2, 2)), np.repeat(np.arange(4), T // 4)


def test_paper_rule_in_the_router_first_batch_then_fixed():
    m = paper_moe()
    x, pl, tr = setup()
    a = route(x, m, pl, tr, gate_bias=np.zeros(8))
    dev = cosine_deviation(x, grap_gate_matrix(32, 8))[a.plan.token, a.plan.expert]
    assert a.capacity_bound == paper_capacity(dev.max(), 32, 8, 1, 64)
    np.testing.assert_array_equal(a.capacity, np.full(8, a.capacity_bound))
    x2, _, _ = setup(seed=5)
    b = route(x2 * 3.0, m, pl, tr, gate_bias=np.zeros(8), state=a.state)
    assert b.capacity_bound == a.capacity_bound  # estimated once, then kept
    fixed = route(x, paper_moe("moe.capacity.paper_delta=0.03"), pl, tr, gate_bias=np.zeros(8))
    assert fixed.capacity_bound == paper_capacity(0.03, 32, 8, 1, 64)


# ----------------------------------------------------------------------------- gate
def test_relu_gate_with_bias():
    s = np.array([[-1.0, 2.0, 0.5]])
    np.testing.assert_array_equal(paper_gate(s, "relu", np.array([0.5, -3.0, 0.0])), [[0.0, 0.0, 0.5]])
    np.testing.assert_array_equal(paper_gate(s, "none", np.array([0.5, -3.0, 0.0])), [[-0.5, -1.0, 0.5]])
    np.testing.assert_array_equal(paper_gate(s), s)


def test_gate_bias_moves_the_choice():
    m = paper_moe("moe.capacity.mode=dropless")
    x, pl, tr = setup()
    base = route(x, m, pl, tr, gate_bias=np.zeros(8))
    bias = np.zeros(8)
    bias[3] = 10.0  # ε_3 large: every token's argmax is expert 3
    moved = route(x, m, pl, tr, gate_bias=bias)
    assert (base.plan.expert != 3).any() and (moved.plan.expert == 3).all()


# ----------------------------------------------------------------------------- locality loss
def test_batch_kl_hand_case():
    probs = np.array([[0.4, 0.4, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1]])
    local = np.array([[True, True, False, False]] * 2)
    # D_c = [0.5, 0.3, 0.1, 0.1]; D_l = [½, ½, 0, 0] mixed with ε = 0.1 of uniform: [0.475, 0.475, 0.025, 0.025]
    d_l = localised_distribution(local, None, 0.1)
    np.testing.assert_allclose(d_l, [0.475, 0.475, 0.025, 0.025], atol=1e-15)
    expected = 0.5 * math.log(0.5 / 0.475) + 0.3 * math.log(0.3 / 0.475) + 0.2 * math.log(0.1 / 0.025)
    assert batch_locality_loss(probs, local, None, np.zeros(2, np.int64), 0.1) == pytest.approx(expected, abs=1e-14)
    # unsmoothed, the remote experts' D_l = 0 makes the KL infinite: why the smoothing exists
    with np.errstate(divide="ignore"):
        assert kl_divergence(probs.mean(axis=0), localised_distribution(local, None, 0.0)) == math.inf
    # the minimum, 0, is at D_c = D_l^ε; per rank, averaged: two ranks on different nodes
    two = np.array([[0.475, 0.475, 0.025, 0.025], [0.025, 0.025, 0.475, 0.475]])
    assert batch_locality_loss(
        two, np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool), None, np.array([0, 1]), 0.1
    ) == pytest.approx(0.0, abs=1e-15)


def test_batch_kl_with_domains_and_a_node_without_local_experts():
    # token 1 may use experts {2, 3} only, both remote: its target is uniform over its allowed experts
    local = np.array([[True, False, False, False], [False, False, False, False]])
    allowed = np.array([[True, True, False, False], [False, False, True, True]])
    d_l = localised_distribution(local, allowed, 0.2)
    # q = [1, 0, 0, 0] and [0, 0, ½, ½] → mean [½, 0, ¼, ¼]; u = [¼, ¼, ¼, ¼] → 0.8·q + 0.2·u
    np.testing.assert_allclose(d_l, [0.45, 0.05, 0.25, 0.25], atol=1e-15)


def test_locmoe_paper_router_runs_top1_with_the_batch_loss():
    m = paper_moe()
    assert (m.router.top_k, m.router.gate_activation, m.router.gate_bias, m.router.rho) == (1, "relu", True, 1.0)
    assert (m.router.locality_loss, m.router.balance_counts, m.capacity.bound_rule) == ("batch", "gate", "paper")
    x, pl, tr = setup()
    r = route(x, m, pl, tr, gate_bias=np.zeros(8))
    assert r.plan.expert.shape == (64,)
    local = pl.node_mask()[pl.topology.node_of(tr)]
    assert r.locality_loss == pytest.approx(batch_locality_loss(r.probs, local, None, tr, 0.01), abs=1e-15)


# ----------------------------------------------------------------------------- Eq. 5
def test_balance_counts_gate_counts_the_gates_top_k_before_the_override():
    common = ["moe.router.kind=locmoe", "moe.router.rho=0.1", "moe.capacity.mode=dropless"]
    x, pl, tr = setup()
    sel = route(x, load_config(overrides=["model.d_model=32", "model.n_heads=2", *common]).moe, pl, tr)
    gate = route(
        x,
        load_config(overrides=["model.d_model=32", "model.n_heads=2", *common, "moe.router.balance_counts=gate"]).moe,
        pl,
        tr,
    )
    np.testing.assert_array_equal(sel.plan.expert, gate.plan.expert)  # same routing
    from locmoe.routing import load_balance_loss, top_k

    idx = top_k(gate.probs, 2)[0]
    expected = np.mean([load_balance_loss(gate.probs[tr == q], idx[tr == q], 8) for q in range(4)])
    assert gate.aux_loss == pytest.approx(expected, abs=1e-15)
    assert gate.aux_loss != pytest.approx(sel.aux_loss, abs=1e-6)  # ρ = 0.1 overrode choices
