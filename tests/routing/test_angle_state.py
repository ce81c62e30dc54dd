"""Regression: an expert that gets no copy in the first step must not start its angle average at 0.

Before the fix, ``update_angle_ema(None, δ, seen)`` returned δ with 0 for the unseen experts; the ``quantile``
rule then measured their cones with a half-angle of 0 (later 0.1·δ, 0.19·δ, ... under momentum 0.9), found
no token inside and gave them capacity 1 for several steps: a first batch that lacks one Random-Routed-Experts
domain dropped nearly every copy of that domain's experts. Now an unseen expert's average stays NaN until it
is seen, takes its first δ as it is, and an expert without an average falls back to the factor capacity.
"""

import numpy as np

from locmoe.config import load_config
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import factor_capacity, route, update_angle_ema
from locmoe.routing.domains import domain_expert_groups

E, D_MODEL, RANKS, PER_RANK = 8, 32, 4, 64


def moe(*extra):
    return load_config(
        overrides=[
            f"model.d_model={D_MODEL}",
            "model.n_heads=2",
            f"moe.num_experts={E}",
            "moe.router.kind=gshard",
            "moe.router.gate=grap",
            "moe.capacity.mode=bound",
            "moe.capacity.bound_rule=quantile",
            "moe.domains.num_domains=2",
            *extra,
        ]
    ).moe


def two_steps(m):
    """Step 1: every token of domain 0; step 2: every token of domain 1. Returns both results."""
    placement = ExpertPlacement.contiguous(E, Topology(2, 2))
    ranks = np.repeat(np.arange(RANKS), PER_RANK)
    rng = np.random.default_rng(0)
    T = RANKS * PER_RANK
    first = route(rng.standard_normal((T, D_MODEL)), m, placement, ranks, domain=np.zeros(T, np.int64))
    second = route(
        rng.standard_normal((T, D_MODEL)), m, placement, ranks, domain=np.ones(T, np.int64), state=first.state
    )
    return first, second


def test_an_expert_unseen_in_the_first_step_keeps_a_usable_capacity():
    m = moe()
    first, second = two_steps(m)
    group1 = domain_expert_groups(2, E, m.domains.seed)[1]
    T = RANKS * PER_RANK
    assert (first.plan.expert_load()[group1] == 0).all()  # the set-up: domain 1 unseen in step 1
    # after step 1 the unseen experts carry no average (NaN), not an angle of 0
    assert np.isnan(first.state.angle_ema[group1]).all()
    load = second.plan.expert_load()[group1]
    admitted = second.plan.admitted()[group1]
    # step 2 measures group 1's cones from its own first angles: the quantile rule gives each about
    # 1.05·(its share of the tokens inside the cones), so most copies fit. Before the fix: capacity 1 each.
    assert (second.capacity[group1] > 1).all(), second.capacity
    assert admitted.sum() >= 0.5 * load.sum(), (load, admitted, second.capacity)
    # and the unseen experts of step 1 had the factor capacity there, not 1
    np.testing.assert_array_equal(first.capacity[group1], factor_capacity(m.capacity.factor, 2, T, E))


def test_unseen_experts_stay_nan_and_take_their_first_angle_as_it_is():
    ema = update_angle_ema(None, np.array([1.0, 0.0, 2.0]), np.array([True, False, True]), 0.9)
    np.testing.assert_array_equal(np.isnan(ema), [False, True, False])
    ema = update_angle_ema(ema, np.array([2.0, 0.5, 0.0]), np.array([True, True, False]), 0.9)
    np.testing.assert_allclose(ema, [1.1, 0.5, 2.0])  # expert 1's first angle, not 0.1·0.5
