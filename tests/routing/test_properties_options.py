"""Property tests of the issue-14 router options over random scores, topologies and domains (as
``test_properties.py`` does for the shipped routers):

- node-limited top-k: a token's copies reach at most M nodes, those are its M best nodes by the node score, its
  experts are the top-k of the allowed ones on them, and M = N is plain top-k;
- the loss-free selection bias: a bias equal for every expert changes nothing; the combine weights never depend
  on the bias; one update moves every overloaded expert's bias down and every underloaded one's up;
- the batch locality loss is finite and ≥ 0 whatever the probabilities, and 0 exactly at D_c = D_l^ε;
- the paper bound grows with δ, stays in [1, k·T], and its exp form (LocMoE+) never exceeds Theorem 1 for d ≥ 3.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import (
    allowed_experts,
    batch_locality_loss,
    domain_expert_groups,
    localised_distribution,
    min_capacity_fraction,
    node_expert_table,
    node_limited_top_k,
    node_scores,
    paper_capacity,
    selection_scores,
    top_k,
    update_selection_bias,
)


@st.composite
def scored(draw):
    topo = Topology(draw(st.integers(1, 4)), draw(st.integers(1, 2)))
    E = topo.world_size * draw(st.integers(1, 4))
    D = draw(st.sampled_from([d for d in (1, 2) if E % d == 0 and E // d >= 1]))
    T = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    placement = ExpertPlacement.contiguous(E, topo) if draw(st.booleans()) else ExpertPlacement.round_robin(E, topo)
    groups = domain_expert_groups(D, E, 0)
    allowed = allowed_experts(rng.integers(0, D, T), groups, E) if D > 1 else None
    aff = rng.random((T, E))
    if draw(st.booleans()):
        aff = np.round(aff, 1)  # ties
    return placement, groups, allowed, aff, rng


@settings(max_examples=300, deadline=None)
@given(scored(), st.data())
def test_node_limited_choices(s, data):
    placement, groups, allowed, aff, _ = s
    table = node_expert_table(placement)
    N, T = table.shape[0], aff.shape[0]
    per_node = np.array([np.isin(table, g).sum(axis=1) for g in groups])  # [D, N]
    M = data.draw(st.integers(1, N))
    usable = min(np.sort(row[row > 0])[:M].sum() for row in per_node)
    k = data.draw(st.integers(1, max(1, min(3, usable))))
    how = data.draw(st.sampled_from(["max", "top2_sum"]))
    sel = selection_scores(aff, None, allowed)
    idx = node_limited_top_k(sel, k, M, table, how)
    node_of = placement.topology.node_of(placement.rank_array)
    score = node_scores(sel, table, how)
    for t in range(T):
        nodes = set(node_of[idx[t]].tolist())
        assert len(nodes) <= M
        best = np.argsort(-score[t], kind="stable")[:M]
        assert nodes <= set(best.tolist())
        on_best = np.isin(node_of, best) & np.isfinite(sel[t])
        expect = top_k(np.where(on_best, sel[t], -np.inf)[None], k)[0][0]
        np.testing.assert_array_equal(idx[t], expect)
        if allowed is not None:
            assert allowed[t, idx[t]].all()
    if M == N:
        np.testing.assert_array_equal(idx, top_k(sel, k)[0])


@settings(max_examples=200, deadline=None)
@given(scored(), st.floats(-3, 3), st.floats(1e-4, 0.1))
def test_selection_bias(s, shift, rate):
    _, _, allowed, aff, rng = s
    # on a 2^-20 grid, affinity + shift is exact: no tie appears or vanishes by rounding
    aff, shift = np.round(aff * 2**20) / 2**20, round(shift * 2**20) / 2**20
    E = aff.shape[1]
    base = top_k(selection_scores(aff, np.zeros(E), allowed), 1)[0]
    np.testing.assert_array_equal(top_k(selection_scores(aff, np.full(E, shift), allowed), 1)[0], base)
    load = rng.integers(0, 20, E)
    b = update_selection_bias(np.zeros(E), load, rate)
    mean = load.mean()
    assert (b[load > mean] < 0).all() and (b[load < mean] > 0).all() and (b[load == mean] == 0).all()


@settings(max_examples=200, deadline=None)
@given(scored(), st.floats(1e-3, 0.5))
def test_batch_locality_loss_is_finite_nonnegative_and_zero_at_the_target(s, eps):
    placement, _, allowed, aff, _ = s
    T, E = aff.shape
    ranks = np.zeros(T, np.int64)
    local = placement.node_mask()[0][None, :].repeat(T, 0)
    if allowed is not None:
        local = local & allowed
    z = np.where(allowed if allowed is not None else True, aff * 5, -np.inf)
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    loss = batch_locality_loss(probs, local, allowed, ranks, eps)
    assert np.isfinite(loss) and loss >= -1e-12
    target = localised_distribution(local, allowed, eps)
    # 1e-12: float64 rounding of the mean of T equal rows
    assert abs(batch_locality_loss(np.tile(target, (T, 1)), local, allowed, ranks, eps)) < 1e-12


@settings(max_examples=300, deadline=None)
@given(
    st.integers(3, 4096), st.floats(0, 1), st.floats(0, 1), st.integers(2, 64), st.integers(1, 4), st.integers(1, 4096)
)
def test_paper_bound_is_monotone_and_clipped(d, a, b, n, k, T):
    lo, hi = sorted((a, b))
    for form in ("exact", "exp"):
        c_lo, c_hi = paper_capacity(lo, d, n, k, T, form), paper_capacity(hi, d, n, k, T, form)
        assert 1 <= c_lo <= c_hi <= k * T
    exact, exp = min_capacity_fraction(hi, d, n, "exact"), min_capacity_fraction(hi, d, n, "exp")
    assert exp <= exact * (1 + 1e-12)
