"""ExFlow placement: the ILP against brute force, round-robin and greedy; load limits; bad input.

Hop rates are sums of at most a few thousand float64 terms: solvers that agree agree to ~1e-12, so equality
is checked to 1e-9 (HiGHS's integrality and feasibility tolerances are far tighter than the gaps between
distinct placements' objectives on these traces, which are multiples of 1/(T·k²) ≈ 1e-4).
"""

import pytest

from locmoe.placement.brute_force import brute_force_placement, enumerate_placements
from locmoe.placement.errors import PlacementError
from locmoe.placement.exflow import colocated_mass, place_exflow
from locmoe.placement.greedy import within_load_limit
from locmoe.placement.hops import baseline_assignment, check_assignment, expected_hops, pair_weights
from locmoe.placement.synthetic import planted_trace

TINY = [(4, 2, 3, 1), (6, 3, 3, 2), (8, 2, 3, 3), (8, 4, 2, 4)]  # (E, D, L, seed)


def tiny_trace(E, L, seed, strength=0.6, k=2):
    groups = 2 if E % 2 == 0 else 3
    return planted_trace(1500, E, k, L, groups=groups, strength=strength, skew=0.4, seed=seed)


def test_dynamic_program_equals_plain_enumeration():
    t = tiny_trace(4, 3, 0)
    w = pair_weights(t)
    a = brute_force_placement(w, 3, 4, 2)
    assert colocated_mass(w, a) == pytest.approx(enumerate_placements(w, 3, 4, 2), abs=1e-12)


@pytest.mark.parametrize("E, D, L, seed", TINY)
def test_ilp_equals_brute_force_on_tiny_instances(E, D, L, seed):
    t = tiny_trace(E, L, seed)
    exact = place_exflow(t, D, method="brute_force")
    ilp = place_exflow(t, D, method="ilp", time_limit=20)
    assert ilp.status == "optimal"
    assert ilp.hops == pytest.approx(exact.hops, abs=1e-9)
    check_assignment(ilp.assignment, D, E)


@pytest.mark.parametrize("seed", range(4))
def test_ilp_never_worse_than_round_robin_contiguous_or_greedy(seed):
    t = planted_trace(3000, 8, 2, 4, groups=4, strength=0.5, skew=0.5, seed=seed)
    w = pair_weights(t)
    ilp = place_exflow(t, 4, method="ilp", time_limit=10)
    greedy = place_exflow(t, 4, method="greedy", seed=seed)
    for kind in ("round_robin", "contiguous"):
        assert ilp.hops <= expected_hops(w, baseline_assignment(kind, 4, 8, 4)) + 1e-12
    assert ilp.hops <= greedy.hops + 1e-12
    assert ilp.hops_lower_bound is None or ilp.hops_lower_bound <= ilp.hops + 1e-9


def test_ilp_that_runs_out_of_time_still_returns_a_valid_plan():
    t = planted_trace(5000, 16, 2, 4, groups=8, strength=0.4, seed=0)
    greedy = place_exflow(t, 4, method="greedy")
    plan = place_exflow(t, 4, method="ilp", time_limit=0.5)
    check_assignment(plan.assignment, 4, 16)
    assert plan.hops <= greedy.hops + 1e-12
    assert plan.status in ("optimal", "time_limit", "heuristic")


def test_planted_affinity_is_found():
    t = planted_trace(20000, 32, 2, 4, groups=8, strength=0.9, seed=0)
    plan = place_exflow(t, 8, method="greedy")
    rr = expected_hops(pair_weights(t), baseline_assignment("round_robin", 4, 32, 8))
    assert plan.hops / rr < 0.4


def test_load_limit_is_respected():
    t = planted_trace(3000, 8, 2, 3, groups=2, strength=0.9, skew=1.5, seed=5)
    loads = t.expert_load().astype(float)
    free = place_exflow(t, 2, method="brute_force")
    assert not within_load_limit(free.assignment, loads, 1.05, 2)  # the limit binds on this trace
    for method in ("ilp", "brute_force"):
        plan = place_exflow(t, 2, method=method, load_limit=1.05, time_limit=20)
        assert within_load_limit(plan.assignment, loads, 1.05, 2), method
        assert plan.hops >= free.hops - 1e-12
    exact = place_exflow(t, 2, method="brute_force", load_limit=1.05)
    assert place_exflow(t, 2, method="ilp", load_limit=1.05, time_limit=20).hops == pytest.approx(exact.hops, abs=1e-9)


def test_bad_requests_name_the_value():
    t = tiny_trace(8, 2, 0)
    with pytest.raises(PlacementError, match=r"--devices 3: the 8 experts of each layer must divide evenly"):
        place_exflow(t, 3)
    with pytest.raises(PlacementError, match=r"placement method 'magic'; allowed: auto, ilp, greedy, brute_force"):
        place_exflow(t, 2, method="magic")
    with pytest.raises(PlacementError, match=r"load limit 0.5: must be >= 1"):
        place_exflow(t, 2, load_limit=0.5)
    one_hot = planted_trace(500, 4, 1, 2, groups=2, strength=1.0, skew=0.0, seed=0)
    heavy = one_hot.layers[0].copy()
    heavy[:] = 0  # every token on expert 0
    one_hot.layers[0] = heavy
    with pytest.raises(PlacementError, match="no balanced placement of layer 0 keeps every device under 1.2"):
        place_exflow(one_hot, 2, method="brute_force", load_limit=1.2)
    with pytest.raises(PlacementError, match="load limit 1.2: no balanced placement keeps every device"):
        place_exflow(one_hot, 2, method="ilp", load_limit=1.2, time_limit=10)


def test_brute_force_refuses_large_instances():
    with pytest.raises(PlacementError, match="balanced maps of 16 experts onto 4 devices per layer"):
        place_exflow(planted_trace(100, 16, 2, 2, seed=0), 4, method="brute_force")
