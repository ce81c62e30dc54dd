"""Baseline routers, domain groups, and the whole reference router."""

import numpy as np
import pytest

from locmoe.config import load_config
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import allowed_experts, domain_expert_groups, expert_choice, hash_route, hash_table, route, top_k


def test_domain_groups_are_strided_and_seeded():
    g = domain_expert_groups(2, 8, seed=0)
    assert sorted(map(tuple, g)) == [(0, 2, 4, 6), (1, 3, 5, 7)]
    np.testing.assert_array_equal(g, domain_expert_groups(2, 8, seed=0))
    mask = allowed_experts(np.array([0, 1]), g, 8)
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), g[0])
    with pytest.raises(ValueError, match=r"domain ids must lie in \[0, 2\)"):
        allowed_experts(np.array([2]), g, 8)


def test_hash_router():
    table = hash_table(256, 4, seed=1)
    assert table.shape == (256,) and table.min() >= 0 and table.max() < 4
    np.testing.assert_array_equal(table, hash_table(256, 4, seed=1))
    groups = np.array([[0, 2, 4, 6], [1, 3, 5, 7]])
    ids = np.array([5, 5, 9])
    out = hash_route(ids, table, groups, np.array([0, 1, 1]))
    np.testing.assert_array_equal(out[:, 0], [groups[0, table[5]], groups[1, table[5]], groups[1, table[9]]])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\)"):
        hash_route(np.array([300]), table, groups, np.array([0]))


def test_expert_choice_hand_case():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    token, expert = expert_choice(probs, 1)
    np.testing.assert_array_equal(token, [0, 2])
    np.testing.assert_array_equal(expert, [0, 1])
    token, expert = expert_choice(probs, 2)  # expert 0: tokens 0, 1; expert 1: tokens 2, 1
    np.testing.assert_array_equal(np.stack([token, expert]), [[0, 1, 1, 2], [0, 0, 1, 1]])


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    placement = ExpertPlacement.contiguous(8, Topology(2, 2))
    x = rng.standard_normal((64, 32))
    return x, placement, np.repeat(np.arange(4), 16), rng.standard_normal((32, 8)) * 0.3, rng.integers(0, 256, 64)


def moe(*overrides):
    return load_config(overrides=["model.d_model=32", "model.n_heads=2", *overrides]).moe


def test_locmoe_with_rho_one_chooses_like_gshard(batch):
    x, pl, tr, gw, ids = batch
    a = route(x, moe("moe.router.rho=1.0", "moe.router.gate=dense"), pl, tr, gate_weight=gw)
    b = route(x, moe("moe.router.kind=gshard"), pl, tr, gate_weight=gw)
    np.testing.assert_array_equal(a.plan.expert, b.plan.expert)
    np.testing.assert_array_equal(a.plan.expert.reshape(-1, 2), top_k(b.probs, 2)[0])


def test_locmoe_reduces_cross_node_copies(batch):
    x, pl, tr, gw, ids = batch
    loc = route(x, moe("moe.router.gate=dense"), pl, tr, gate_weight=gw).plan.locality_fractions()
    gsh = route(x, moe("moe.router.kind=gshard"), pl, tr, gate_weight=gw).plan.locality_fractions()
    assert loc["cross_node"] < gsh["cross_node"]


def test_router_outputs_per_kind(batch):
    x, pl, tr, gw, ids = batch
    h = route(x, moe("moe.router.kind=hash"), pl, tr, token_ids=ids)
    assert h.probs is None and h.aux_loss == 0 and (h.plan.weight == 1).all() and len(h.plan.expert) == 64
    s = route(x, moe("moe.router.kind=switch"), pl, tr, gate_weight=gw)
    np.testing.assert_allclose(s.plan.weight, s.probs.max(axis=1))  # raw top-1 probability
    g = route(x, moe("moe.router.kind=gshard"), pl, tr, gate_weight=gw)
    np.testing.assert_allclose(g.plan.weight.reshape(-1, 2).sum(axis=1), 1.0)
    ec = route(x, moe("moe.router.kind=expert_choice"), pl, tr, gate_weight=gw)
    np.testing.assert_array_equal(ec.plan.admitted(), np.full(8, 20))  # ceil(1.25 * 2 * 64 / 8)
    assert ec.plan.dropped() == 0


def test_capacity_modes(batch):
    x, pl, tr, gw, ids = batch
    f = route(x, moe("moe.capacity.factor=1.0"), pl, tr)
    assert (f.capacity == 16).all() and f.capacity_bound is None
    d = route(x, moe("moe.capacity.mode=dropless"), pl, tr)
    assert d.plan.dropped() == 0 and (d.capacity == 128).all()
    b = route(x, moe("moe.capacity.mode=bound"), pl, tr)
    assert b.capacity_bound >= 16 and (b.capacity == b.capacity_bound).all()
    assert b.state.angle_ema.shape == (8,)
    q = route(x, moe("moe.capacity.mode=bound", "moe.capacity.bound_rule=quantile"), pl, tr)
    assert q.capacity.sum() >= 128 and q.capacity_bound == q.capacity.max()


def test_domains_restrict_choices(batch):
    x, pl, tr, gw, ids = batch
    m = moe("moe.domains.num_domains=2")
    domain = np.arange(64) % 2
    r = route(x, m, pl, tr, domain=domain)
    groups = domain_expert_groups(2, 8, m.domains.seed)
    assert all(e in groups[domain[t]] for t, e in zip(r.plan.token, r.plan.expert))
