"""Property tests of the dispatch plan over random topologies, placements, probabilities and capacities.

The intra-node-first rule checked here, exactly: a token keeps a cross-node choice only if every expert on
its own node with p >= rho * p_(k) (p_(k) = its k-th best probability) is already among its choices; so no
copy crosses nodes while a top-k-eligible local expert is still unchosen.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import build_dispatch_plan, chunk_permutation, intra_node_first, local_expert_mask, top_k


@st.composite
def scenarios(draw):
    topo = Topology(draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    W = topo.world_size
    E = W * draw(st.integers(1, 3))
    k = draw(st.integers(1, min(E, 3)))
    tokens_per_rank = draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["contiguous", "round_robin", "shuffled"]))
    if kind == "shuffled":
        placement = ExpertPlacement.explicit(rng.permutation(np.repeat(np.arange(W), E // W)), topo)
    else:
        placement = getattr(ExpertPlacement, kind)(E, topo)
    logits = rng.standard_normal((W * tokens_per_rank, E)) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if draw(st.booleans()):  # exact ties
        probs = np.round(probs, 1) + 1e-12
    capacity = rng.integers(0, k * W * tokens_per_rank + 1, size=E)
    rho = draw(st.sampled_from([0.1, 0.5, 0.9, 1.0]))
    return placement, probs, k, capacity, rho, np.repeat(np.arange(W), tokens_per_rank)


def make_plan(placement, probs, k, capacity, rho, token_rank):
    local = local_expert_mask(placement, token_rank, None)
    idx = intra_node_first(probs, k, local, rho)
    T = len(probs)
    token, expert = np.repeat(np.arange(T), k), idx.reshape(-1)
    prob = probs[token, expert]
    return idx, local, build_dispatch_plan(token, expert, prob, prob, token_rank, placement, capacity, T)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_every_copy_is_delivered_once_or_counted_dropped(s):
    _, _, plan = make_plan(*s)
    kept_ids = np.flatnonzero(plan.kept)
    assert plan.kept.sum() + plan.dropped() == len(plan.kept)
    W = plan.world_size
    sent = np.concatenate([plan.send_order(r) for r in range(W)])
    processed = np.concatenate([plan.expert_order(r) for r in range(W)])
    np.testing.assert_array_equal(np.sort(sent), kept_ids)
    np.testing.assert_array_equal(np.sort(processed), kept_ids)
    assert plan.send_counts().sum() == len(kept_ids) == plan.recv_counts().sum()


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_no_expert_exceeds_capacity_and_priority_is_respected(s):
    _, _, plan = make_plan(*s)
    assert (plan.admitted() <= plan.capacity).all()
    for e in range(plan.placement.num_experts):
        ids = np.flatnonzero(plan.expert == e)
        key = lambda c: (plan.locality[c], -plan.prob[c], c)  # noqa: E731
        kept = [key(c) for c in ids if plan.kept[c]]
        dropped = [key(c) for c in ids if not plan.kept[c]]
        if kept and dropped:
            assert max(kept) < min(dropped)
        if dropped:
            assert len(kept) == plan.capacity[e]


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_no_cross_node_choice_while_an_eligible_local_expert_is_unchosen(s):
    placement, probs, k, capacity, rho, token_rank = s
    idx, local, plan = make_plan(*s)
    kth = top_k(probs, k)[1][:, -1]
    for t in range(len(probs)):
        crosses = (plan.locality[plan.token == t] == 2).any()
        eligible = np.flatnonzero(local[t] & (probs[t] >= rho * kth[t]))
        if crosses and rho < 1.0:
            assert set(eligible) <= set(idx[t].tolist())


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_combine_inverts_dispatch_and_experts_see_contiguous_blocks(s):
    _, _, plan = make_plan(*s)
    for r in range(plan.world_size):
        send = plan.send_order(r)
        np.testing.assert_array_equal(send[plan.combine_order(r)], np.sort(send))
        slots = plan.expert_slot[plan.expert_order(r)]
        assert (np.diff(slots) >= 0).all()
        np.testing.assert_array_equal(
            np.bincount(slots, minlength=plan.placement.experts_per_rank), plan.recv_counts()[r].sum(axis=0)
        )


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_cross_node_bytes_are_the_same_for_both_schemes(s):
    _, _, plan = make_plan(*s)
    crossing = int(((plan.locality == 2) & plan.kept).sum())
    assert plan.traffic(3, "flat")["cross_node"].sum() == 3 * crossing
    assert plan.traffic(3, "hierarchical")["cross_node"].sum() == 3 * crossing


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=3, max_size=3), min_size=1, max_size=4))
def test_chunk_permutation_is_the_axis_swap(rows):
    counts = np.array(rows)
    A, B = counts.shape
    labels = np.concatenate([np.full(counts[a, b], a * B + b) for a in range(A) for b in range(B)])
    perm = chunk_permutation(counts)
    np.testing.assert_array_equal(np.sort(perm), np.arange(len(labels)))
    swapped = labels[perm]
    expected = np.concatenate([np.full(counts[a, b], a * B + b) for b in range(B) for a in range(A)])
    np.testing.assert_array_equal(swapped, expected)
