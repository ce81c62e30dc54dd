"""Today's baselines as router options: DeepSeek-V3 loss-free balancing (selection bias), node-limited top-k,
sigmoid scoring, ST-MoE's z-loss; hand cases and the whole reference router."""

import math

import numpy as np
import pytest

from locmoe.config import ConfigError, load_config
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import (
    RouterState,
    check_node_limit,
    node_expert_table,
    node_limited_top_k,
    node_scores,
    route,
    router_z_loss,
    selection_scores,
    sigmoid,
    update_selection_bias,
)


def moe(*overrides):
    return load_config(
        overrides=[
            "model.d_model=32",
            "model.n_heads=2",
            "moe.num_experts=8",
            "parallel.nodes=2",
            "parallel.devices_per_node=2",
            *overrides,
        ]
    ).moe


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    return (
        rng.standard_normal((64, 32)),
        ExpertPlacement.contiguous(8, Topology(2, 2)),
        np.repeat(np.arange(4), 16),
        rng.standard_normal((32, 8)) * 0.3,
    )


# ----------------------------------------------------------------------------- loss-free balancing
def test_bias_update_hand_case():
    b = update_selection_bias(np.zeros(4), np.array([10, 2, 4, 4]), 0.1)  # mean 5
    np.testing.assert_allclose(b, [-0.1, 0.1, 0.1, 0.1], atol=1e-15)
    b = update_selection_bias(b, np.array([5, 5, 6, 4]), 0.1)  # at the mean: unchanged
    np.testing.assert_allclose(b, [-0.1, 0.1, 0.0, 0.2], atol=1e-15)


def test_bias_changes_the_selection_not_the_weights():
    aff = np.array([[0.5, 0.45, 0.05]])
    sel = selection_scores(aff, np.array([-0.1, 0.0, 0.0]), None)
    assert sel.argmax() == 1
    # a masked expert stays out whatever its bias
    sel = selection_scores(aff, np.array([0.0, 0.0, 9.0]), np.array([[True, True, False]]))
    assert sel[0, 2] == -np.inf


def test_loss_free_router_updates_its_bias_from_the_groups_load(batch):
    x, pl, tr, gw = batch
    m = moe("moe.router.kind=gshard", "moe.router.bias_update_rate=0.01", "moe.capacity.mode=dropless")
    a = route(x, m, pl, tr, gate_weight=gw)
    load = a.plan.expert_load()
    np.testing.assert_allclose(a.state.selection_bias, 0.01 * np.sign(load.mean() - load), atol=1e-15)
    # the next step ranks by affinity + bias, and weighs by the raw affinity
    bias = np.zeros(8)
    bias[5] = 5.0
    b = route(x, m, pl, tr, gate_weight=gw, state=RouterState(selection_bias=bias))
    assert (b.plan.expert.reshape(-1, 2)[:, 0] == 5).all()
    np.testing.assert_allclose(b.plan.weight.reshape(-1, 2).sum(axis=1), 1.0, atol=1e-12)
    p = b.probs[np.repeat(np.arange(64), 2), b.plan.expert].reshape(-1, 2)
    np.testing.assert_allclose(b.plan.weight.reshape(-1, 2), p / p.sum(axis=1, keepdims=True), atol=1e-12)


def test_repeated_updates_balance_a_skewed_gate(batch):
    x, pl, tr, gw = batch
    m = moe("moe.router.kind=switch", "moe.router.bias_update_rate=0.002", "moe.capacity.mode=dropless")
    x = x + 0.5  # positive feature sums ...
    skew = gw * 0.1
    skew[:, 0] += 0.2  # ... so expert 0 wins most tokens
    state = RouterState()
    first = route(x, m, pl, tr, gate_weight=skew, state=state)
    mean = 64 / 8
    assert first.plan.expert_load().max() >= 3 * mean
    loads = []
    for _ in range(700):
        r = route(x, m, pl, tr, gate_weight=skew, state=state)
        state = r.state
        loads.append(r.plan.expert_load())
    # the fixed-step sign rule circles around the balance on a fixed batch: balanced on average
    average = np.mean(loads[-200:], axis=0)
    assert average.max() <= 1.5 * mean and average.min() >= 0.5 * mean, average


# ----------------------------------------------------------------------------- node-limited top-k
def test_node_limited_hand_case():
    table = np.array([[0, 1], [2, 3]])
    sel = np.array([[0.1, 0.5, 0.3, 0.35]])
    np.testing.assert_allclose(node_scores(sel, table, "max"), [[0.5, 0.35]])
    np.testing.assert_allclose(node_scores(sel, table, "top2_sum"), [[0.6, 0.65]])
    np.testing.assert_array_equal(node_limited_top_k(sel, 2, 1, table, "max"), [[1, 0]])  # node 0
    np.testing.assert_array_equal(node_limited_top_k(sel, 2, 1, table, "top2_sum"), [[3, 2]])  # node 1
    np.testing.assert_array_equal(node_limited_top_k(sel, 2, 2, table, "max"), [[1, 3]])  # plain top-2
    tie = np.array([[0.4, 0.1, 0.4, 0.1]])  # equal nodes: node 0
    np.testing.assert_array_equal(node_limited_top_k(tie, 2, 1, table, "max"), [[0, 1]])
    masked = np.array([[-np.inf, 0.9, 0.2, 0.1]])  # a node with one usable expert
    np.testing.assert_allclose(node_scores(masked, table, "top2_sum"), [[0.9, 0.3]])


def test_node_limit_feasibility_check():
    table = np.array([[0, 1], [2, 3]])
    check_node_limit(table, np.array([[0, 1, 2, 3]]), 1, 2)
    with pytest.raises(ConfigError, match="node_limit.*fewer than top_k"):
        check_node_limit(table, np.array([[0, 2], [1, 3]]), 1, 2)  # one expert of each domain per node
    with pytest.raises(ConfigError, match="more than the topology"):
        check_node_limit(table, np.array([[0, 1, 2, 3]]), 3, 1)


def test_node_limited_router_keeps_each_token_on_its_m_nodes(batch):
    x, pl, tr, gw = batch
    r = route(
        x,
        moe("moe.router.kind=gshard", "moe.router.node_limit=1", "moe.capacity.mode=dropless"),
        pl,
        tr,
        gate_weight=gw,
    )
    nodes = pl.topology.node_of(pl.rank_array[r.plan.expert]).reshape(-1, 2)
    assert (nodes[:, 0] == nodes[:, 1]).all()
    assert r.plan.locality_fractions()["cross_node"] > 0.2  # the chosen node need not be the token's own
    assert node_expert_table(pl).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


# ----------------------------------------------------------------------------- sigmoid scoring, z-loss
def test_sigmoid_scoring(batch):
    x, pl, tr, gw = batch
    r = route(
        x,
        moe("moe.router.kind=gshard", "moe.router.scoring=sigmoid", "moe.capacity.mode=dropless"),
        pl,
        tr,
        gate_weight=gw,
    )
    aff = sigmoid(x @ gw)
    idx = np.argsort(-aff, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(r.plan.expert.reshape(-1, 2), idx)
    chosen = np.take_along_axis(aff, idx, 1)
    np.testing.assert_allclose(r.plan.weight.reshape(-1, 2), chosen / chosen.sum(1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(r.probs, aff / aff.sum(1, keepdims=True), atol=1e-12)  # what the losses see
    assert sigmoid(np.array([-np.inf]))[0] == 0.0


def test_z_loss_hand_case(batch):
    assert router_z_loss(np.array([[0.0, 0.0]])) == pytest.approx(math.log(2) ** 2, abs=1e-15)
    assert router_z_loss(np.array([[math.log(3), -np.inf, 0.0], [0.0, 0.0, 0.0]])) == pytest.approx(
        (math.log(4) ** 2 + math.log(3) ** 2) / 2, abs=1e-15
    )
    x, pl, tr, gw = batch
    r = route(x, moe("moe.router.kind=gshard", "moe.router.z_loss_coef=1e-3"), pl, tr, gate_weight=gw)
    assert r.z_loss == pytest.approx(router_z_loss(x @ gw), abs=1e-15)


# ----------------------------------------------------------------------------- config rules
@pytest.mark.parametrize(
    "overrides,field",
    [
        (["moe.router.scoring=sigmoid"], "moe.router.scoring"),  # locmoe
        (["moe.router.kind=hash", "moe.router.bias_update_rate=0.001"], "moe.router.bias_update_rate"),
        (["moe.router.kind=gshard", "moe.router.node_score=top2_sum"], "moe.router.node_score"),
        (["moe.router.kind=gshard", "moe.router.node_limit=3"], "moe.router.node_limit"),  # 2 nodes
        (["moe.router.kind=gshard", "moe.router.locality_loss=batch"], "moe.router.locality_loss"),
        (["moe.router.kind=switch", "moe.router.balance_counts=gate"], "moe.router.balance_counts"),
        (["moe.router.kind=hash", "moe.router.gate_bias=true"], "moe.router.gate_bias"),
        (["moe.router.kind=hash", "moe.router.z_loss_coef=0.001"], "moe.router.z_loss_coef"),
        (["moe.router.kind=gshard", "moe.router.bias_update_rate=2"], "moe.router.bias_update_rate"),
        (["moe.capacity.paper_delta=1.5"], "moe.capacity.paper_delta"),
    ],
)
def test_option_rules_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        moe(*overrides)
    assert field in str(err.value)
