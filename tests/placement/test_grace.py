"""GRACE: grouping, replication under the slot budget, locality-aware replica routing, placement tables."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locmoe.export.manifest import PlacementTable
from locmoe.placement.affinity import coactivation_counts
from locmoe.placement.errors import PlacementError
from locmoe.placement.grace import balanced_partition, devices_per_token, grouping_assignment, plan_grace, route_trace
from locmoe.placement.hops import baseline_assignment
from locmoe.placement.replica_routing import route_counts, route_tokens, water_fill
from locmoe.placement.replication import ReplicatedLayer, flows, replicate_layer
from locmoe.placement.synthetic import planted_trace
from locmoe.placement.table import from_placement_table, to_placement_table


@pytest.fixture(scope="module")
def skewed():
    return planted_trace(6000, 16, 2, 3, groups=4, strength=0.85, skew=0.8, seed=2)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(0, 200))
@settings(max_examples=60, deadline=None)
def test_water_fill_adds_up_and_raises_the_lowest_first(levels, amount):
    alloc = water_fill(np.array(levels, float), amount)
    assert alloc.sum() == amount and (alloc >= 0).all()
    after = np.array(levels) + alloc
    # a bin that received something is at most one above the lowest final level (integer water level)
    if amount:
        assert after[alloc > 0].max() <= after.min() + 1


@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**32 - 1), st.floats(1.0, 2.0))
@settings(max_examples=60, deadline=None)
def test_route_counts_places_every_copy_on_a_holder(D, E, seed, threshold):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 30, (D, E))
    holders = rng.random((E, D)) < 0.4
    holders[np.arange(E), rng.integers(0, D, E)] = True  # every expert has a primary
    A = route_counts(n, holders, threshold)
    np.testing.assert_array_equal(A.sum(axis=2), n)
    assert (A >= 0).all() and not A[:, ~holders].any()  # nothing sent to a non-holder


@pytest.mark.parametrize("grouping", ["exflow", "coactivation", "round_robin"])
@pytest.mark.parametrize("token_placement", ["home", "previous"])
def test_every_copy_is_routed_to_a_device_holding_its_expert(skewed, grouping, token_placement):
    plan = plan_grace(skewed, 4, slots=2, grouping=grouping, token_placement=token_placement, time_limit=0.5)
    for layer, choices, dest in zip(plan.layers, skewed.layers, route_trace(skewed, plan)):
        assert dest.shape == choices.shape
        assert layer.holders()[choices, dest].all()


@pytest.mark.parametrize("slots", [0, 1, 3])
def test_replication_respects_the_slot_budget(skewed, slots):
    plan = plan_grace(skewed, 4, slots=slots, grouping="contiguous")
    for layer, primary in zip(plan.layers, plan.assignment):
        assert (layer.extra_slots() <= slots).all()
        np.testing.assert_array_equal(layer.primary, primary)  # primaries untouched
        for e, devs in enumerate(layer.replicas):
            assert primary[e] not in devs and len(set(devs)) == len(devs)  # no duplicate copies


def test_replication_balances_a_skewed_layer(skewed):
    plan = plan_grace(skewed, 4, slots=2, grouping="exflow", time_limit=0.5)
    worst = plan.most_skewed()
    assert worst["max_mean_before"] > 1.3  # the trace is skewed
    assert worst["max_mean_after"] <= 1.10
    assert all(r["max_mean_after"] <= r["max_mean_before"] + 1e-12 for r in plan.stats)


def test_local_replica_is_used_while_under_threshold():
    holders = np.ones((4, 2), bool)  # every expert on both devices
    ids = np.array([[0], [1], [2], [3]])
    where = np.array([0, 0, 1, 1])
    np.testing.assert_array_equal(route_tokens(ids, where, holders, threshold=1.5)[:, 0], where)


def test_overloaded_device_sheds_to_the_least_loaded_replica():
    holders = np.array([[True, True, False], [True, False, False], [False, False, True]])
    n = np.array([[30, 10, 0], [0, 0, 5], [0, 0, 5]])  # [D_src, E]: device 0 is hot
    A = route_counts(n, holders, threshold=1.0)
    np.testing.assert_array_equal(A.sum(axis=2), n)  # every copy placed once
    # cap = 50/3 ≈ 16.7: device 0 (40 copies) spills expert 0 to device 1 up to the cap (16), never past
    # it; expert 1's 10 copies have no other holder and stay, so device 0 keeps 24
    np.testing.assert_array_equal(A.sum(axis=(0, 1)), [24, 16, 10])
    assert A[0, 0, 1] == 16 and (A[:, 1, 1:] == 0).all()


def test_flows_and_replicated_layer_helpers():
    n = flows(np.array([[0, 1], [1, 2]]), np.array([0, 1]), 3, 2)
    np.testing.assert_array_equal(n, [[1, 1, 0], [0, 1, 1]])
    layer = replicate_layer(np.array([[90, 10], [0, 0]]), np.array([0, 1]), 2, slots=1)
    assert layer.replicas[0] == [1] and (layer.extra_slots() <= 1).all()


def test_coactivation_grouping_keeps_a_tokens_experts_together():
    t = planted_trace(4000, 16, 2, 1, groups=4, strength=0.9, seed=1)
    grouped = grouping_assignment(t, 4, "coactivation")[0]
    rr = baseline_assignment("round_robin", 1, 16, 4)[0]
    assert devices_per_token(t.layers[0], grouped) < devices_per_token(t.layers[0], rr)
    assert np.bincount(balanced_partition(coactivation_counts(t.layers[0], 16), 4), minlength=4).tolist() == [4] * 4


def test_placement_table_round_trip_with_replicas(tmp_path, skewed):
    plan = plan_grace(skewed, 4, slots=1, grouping="contiguous")
    table = to_placement_table(plan.assignment, 4, skewed.moe_layers, "grace-contiguous", plan.layers)
    loaded = PlacementTable.load(table.save(tmp_path / "placement.json"))
    assignment, layers = from_placement_table(loaded)
    np.testing.assert_array_equal(assignment, plan.assignment)
    for a, b in zip(layers, plan.layers):
        np.testing.assert_array_equal(a.holders(), b.holders())
    assert loaded.source == "grace-contiguous" and loaded.moe_layers == skewed.moe_layers


def test_bad_requests(skewed):
    with pytest.raises(PlacementError, match="grouping 'random'; allowed: exflow, coactivation"):
        plan_grace(skewed, 4, grouping="random")
    with pytest.raises(PlacementError, match="token placement 'moon'; allowed: home, previous"):
        plan_grace(skewed, 4, token_placement="moon")
    with pytest.raises(PlacementError, match="threshold 0.9 >= 1"):
        plan_grace(skewed, 4, threshold=0.9)
    assert ReplicatedLayer(np.array([0, 1]), num_devices=2).extra_slots().tolist() == [0, 0]
