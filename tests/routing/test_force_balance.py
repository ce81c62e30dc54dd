"""Forced balance (``moe.force_balance``, a benchmark's routing): the numpy reference's rule, every expert's
load exactly equal, and torch and MindSpore equal to the reference with it on.

Tolerances are the conformance suite's (``tests/conformance/test_moe_layer_conformance.py`` says why):
routing decisions exact; outputs y 1e-5 absolute (fp32 frameworks against the float64 reference on fp32
inputs); L_aux and L_loc 2e-6 absolute (fp32 means of 64 per-token terms); gradients torch vs MindSpore 5e-5
absolute, and each framework's directional derivatives against the reference's central differences 2e-4
relative. One process emulates 2 nodes x 2 ranks of 16 tokens, E = 8, so the round-robin restarts at each
rank's first token and k·16 is a multiple of E: every expert gets exactly 2·k copies from every rank.
"""

import numpy as np
import pytest

from locmoe.config import load_config
from locmoe.config.errors import ConfigError
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import combine_weights, forced_experts, rank_positions, route
from tests.backends.mindspore import moe_cases as mc
from tests.conformance import runners

FORCED = "moe.force_balance=true"
CASES = [
    mc.case(kind="locmoe", mode="factor", dispatch="flat", extra=(FORCED,)),
    mc.case(kind="locmoe", mode="bound", extra=(FORCED, "moe.capacity.bound_rule=quantile")),
    mc.case(kind="gshard", mode="dropless", dispatch="flat", extra=(FORCED,)),
    mc.case(kind="switch", mode="factor", dispatch="flat", extra=(FORCED, "moe.router.z_loss_coef=0.01")),
    mc.case(kind="hash", mode="factor", dispatch="flat", extra=(FORCED,)),
    mc.case(
        kind="locmoe",
        mode="factor",
        dispatch="flat",
        extra=(FORCED, "moe.router.rho=0.3", "moe.router.balance_counts=gate", "moe.router.locality_loss=batch"),
    ),
    mc.case(
        kind="gshard",
        mode="factor",
        dispatch="flat",
        extra=(FORCED, "moe.router.scoring=sigmoid", "moe.router.bias_update_rate=0.01", "moe.router.node_limit=1"),
    ),
]
IDS = [mc.case_name(c) for c in CASES]


def test_round_robin_is_torchtitans_rule():
    """torchtitan's own check (TokenChoiceTopKRouter._debug_force_load_balance_routing): 5 tokens, k 3, E 4."""
    np.testing.assert_array_equal(forced_experts(np.arange(5), 3, 4), np.arange(15).reshape(5, 3) % 4)


def test_positions_restart_on_each_rank():
    np.testing.assert_array_equal(rank_positions(np.array([0, 0, 0, 1, 1, 1])), [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(rank_positions(np.array([1, 0, 1, 0])), [0, 0, 1, 1])


@pytest.fixture
def batch():
    rng = np.random.default_rng(5)
    placement = ExpertPlacement.contiguous(8, Topology(2, 2))
    return rng.standard_normal((64, 32)), placement, np.repeat(np.arange(4), 16), rng.standard_normal((32, 8)) * 0.3


def small(*overrides):
    return load_config(overrides=["model.d_model=32", "model.n_heads=2", *overrides]).moe


@pytest.mark.parametrize("kind", ["locmoe", "gshard", "switch", "hash"])
def test_reference_load_is_exactly_uniform(batch, kind):
    x, pl, tr, gw = batch
    moe = small(f"moe.router.kind={kind}", FORCED)
    r = route(x, moe, pl, tr, gate_weight=gw, token_ids=np.arange(64))
    k = moe.router.top_k
    assert (r.plan.expert_load() == 64 * k // 8).all()
    for q in range(4):  # and per source rank
        assert (np.bincount(r.plan.expert[r.plan.src_rank == q], minlength=8) == 16 * k // 8).all()
    assert r.plan.dropped() == 0  # factor 1.25 admits a uniform load


def test_reference_weights_are_the_routers_probabilities(batch):
    """GShard: the forced experts weighted by the router's renormalised probabilities of them; the scores
    and the z-loss are the free router's (the load-balance loss counts the forced, routed choices)."""
    x, pl, tr, gw = batch
    r = route(x, small("moe.router.kind=gshard", FORCED), pl, tr, gate_weight=gw)
    free = route(x, small("moe.router.kind=gshard"), pl, tr, gate_weight=gw)
    idx = forced_experts(rank_positions(tr), 2, 8)
    np.testing.assert_array_equal(r.plan.expert, idx.reshape(-1))
    chosen = np.take_along_axis(r.probs, idx, axis=-1)
    np.testing.assert_allclose(r.plan.weight, combine_weights(chosen).reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(r.probs, free.probs)
    assert r.z_loss == pytest.approx(free.z_loss)


def test_expert_choice_and_domains_refuse_forced_balance():
    with pytest.raises(ConfigError, match="moe.force_balance: true is not allowed for router expert_choice"):
        load_config(overrides=["moe.router.kind=expert_choice", FORCED])
    with pytest.raises(ConfigError, match="moe.force_balance: true is not allowed with moe.domains.num_domains"):
        load_config(overrides=["moe.domains.num_domains=2", FORCED])


@pytest.fixture(scope="module", params=IDS)
def case(request):
    return next(c for c in CASES if mc.case_name(c) == request.param)


@pytest.fixture(scope="module")
def results(case):
    return {b: getattr(runners, f"run_{b}")(case) for b in runners.BACKENDS}


def test_backends_route_like_the_reference(results):
    ref = results["numpy"]
    load = np.bincount(ref.expert, minlength=mc.E)
    assert (load == load[0]).all(), load  # exactly uniform
    for backend in ("torch", "mindspore"):
        np.testing.assert_array_equal(results[backend].expert, ref.expert, err_msg=backend)
        np.testing.assert_array_equal(results[backend].kept, ref.kept, err_msg=backend)


def test_backends_compute_like_the_reference(case, results):
    ref = results["numpy"]
    for backend in ("torch", "mindspore"):
        got = results[backend]
        np.testing.assert_allclose(got.y, ref.y, atol=1e-5, rtol=0, err_msg=backend)
        assert got.aux_loss == pytest.approx(ref.aux_loss, abs=2e-6), backend
        assert got.locality_loss == pytest.approx(ref.locality_loss, abs=2e-6), backend
        for name, v in runners.directions(case).items():
            assert got.derivative(name, v) == pytest.approx(ref.derivative(name, v), rel=2e-4), (backend, name)
        for name in ref.state:
            np.testing.assert_allclose(got.state[name], ref.state[name], atol=1e-7, equal_nan=True, err_msg=name)
    t, m = results["torch"], results["mindspore"]
    for name in t.grads:
        np.testing.assert_allclose(t.grads[name], m.grads[name], atol=5e-5, rtol=0, err_msg=name)
