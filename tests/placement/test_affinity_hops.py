"""Affinity counts and statistics, hop rate and the context-coherent fraction on hand-made traces."""

import numpy as np
import pytest

from locmoe.placement.affinity import affinity_stats, coactivation_counts, conditional, transition_counts
from locmoe.placement.errors import PlacementError
from locmoe.placement.hops import baseline_assignment, coherent_fraction, expected_hops, hops_per_pair, pair_weights
from locmoe.placement.trace import RoutingTrace


def trace_of(layers, E=4):
    k = np.asarray(layers[0]).shape[1]
    fp = {
        "num_experts": E,
        "top_k": k,
        "moe_layers": list(range(len(layers))),
        "router_kind": "t",
        "d_model": 0,
        "vocab_size": 0,
    }
    return RoutingTrace(fp, [np.asarray(a) for a in layers])


def test_top2_counts_every_pair_of_choices():
    prev = np.array([[0, 1]])
    nxt = np.array([[2, 3]])
    c = transition_counts(prev, nxt, 4)
    expected = np.zeros((4, 4))
    expected[[0, 0, 1, 1], [2, 3, 2, 3]] = 1  # k x k = 4 pairs from one token
    np.testing.assert_array_equal(c, expected)


def test_conditional_rows_sum_to_one_and_empty_rows_are_uniform():
    c = np.array([[3.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 2, 2], [1, 1, 1, 1]])
    p = conditional(c)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.75, 0.25, 0, 0])
    np.testing.assert_allclose(p[1], 0.25)


def test_deterministic_successor_is_maximal_affinity():
    x = np.arange(400) % 4
    t = trace_of([x[:, None], ((x + 1) % 4)[:, None]])
    s = affinity_stats(t)[0]
    assert s.top1 == pytest.approx(1.0) and s.entropy_ratio == pytest.approx(0.0)
    assert s.mutual_info_bits == pytest.approx(2.0)  # log2(4): layer l tells everything


def test_independent_layers_have_no_affinity():
    rng = np.random.default_rng(0)
    t = trace_of([rng.integers(0, 4, (40000, 1)), rng.integers(0, 4, (40000, 1))])
    s = affinity_stats(t)[0]
    assert s.top1 == pytest.approx(0.25, abs=0.02)  # tolerance: sampling noise at 40k tokens
    assert s.entropy_ratio == pytest.approx(1.0, abs=0.01)
    assert s.mutual_info_bits == pytest.approx(0.0, abs=0.01)


def test_coactivation_is_symmetric_without_diagonal():
    a = coactivation_counts(np.array([[0, 1], [1, 0], [2, 3]]), 4)
    np.testing.assert_array_equal(a, a.T)
    assert a[0, 1] == 2 and a[2, 3] == 1 and np.trace(a) == 0


def test_hop_rate_and_coherent_fraction_by_hand():
    # token 0 goes expert 0 -> 2, token 1 goes 1 -> 3 (top-1)
    t = trace_of([np.array([[0], [1]]), np.array([[2], [3]])])
    w = pair_weights(t)
    same = np.array([[0, 1, 0, 1], [0, 1, 0, 1]])  # 0 and 2 on device 0, 1 and 3 on device 1
    crossed = np.array([[0, 1, 1, 0], [0, 1, 1, 0]])
    assert expected_hops(w, same) == 0.0 and coherent_fraction(t, same) == 1.0
    assert expected_hops(w, crossed) == 1.0 and coherent_fraction(t, crossed) == 0.0
    half = np.array([[0, 1, 0, 1], [1, 1, 0, 0]])  # token 0 stays on device 0, token 1 crosses
    np.testing.assert_allclose(hops_per_pair(w, half), [0.5])
    assert coherent_fraction(t, half) == 0.5


def test_baselines_and_device_check():
    np.testing.assert_array_equal(baseline_assignment("round_robin", 1, 4, 2), [[0, 1, 0, 1]])
    np.testing.assert_array_equal(baseline_assignment("contiguous", 1, 4, 2), [[0, 0, 1, 1]])
    with pytest.raises(PlacementError, match=r"--devices 3: the 4 experts of each layer must divide evenly"):
        baseline_assignment("round_robin", 1, 4, 3)
