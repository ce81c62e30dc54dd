"""Each torch routing op against its numpy twin in ``locmoe.routing`` on random inputs (exact decisions)."""

import numpy as np
import pytest
import torch

from backends.torch import routing_ops as ops
from locmoe import routing as ref
from locmoe.moe.routing import paper_gate
from tests.backends import shared_routing_ops as shared

rng = shared.rng  # the seeded fixture (seeds 0-4)


def test_grap_and_angles(rng):
    x = rng.standard_normal((10, 32)).astype(np.float32)
    s = ops.grap_scores(torch.from_numpy(x), 8).numpy()
    np.testing.assert_allclose(s, ref.grap_scores(x.astype(np.float64), 8), atol=1e-6)
    a = ops.gate_angles(torch.from_numpy(s).double(), torch.eye(8, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(a, ref.gate_angles(s.astype(np.float64), np.eye(8)), atol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_and_intra_node_first(rng, ties):
    p = shared.probs_with_ties(rng, ties)
    local = rng.random((40, 8)) < 0.4
    np.testing.assert_array_equal(ops.top_k(torch.from_numpy(p), 3).numpy(), ref.top_k(p, 3)[0])
    for rho in (0.1, 0.5, 1.0):
        got = ops.intra_node_first(torch.from_numpy(p), 3, torch.from_numpy(local), rho).numpy()
        np.testing.assert_array_equal(got, ref.intra_node_first(p, 3, local, rho))


def test_admission(rng):
    shared.check_admission(rng, lambda *a: ops.admit(*(torch.from_numpy(v) for v in a)).numpy())


def test_expert_choice(rng):
    shared.check_expert_choice(rng, lambda p, c: [a.numpy() for a in ops.expert_choice(torch.from_numpy(p), c)])


def test_losses_and_weights(rng):
    shared.check_losses_and_weights(
        rng,
        lambda p, idx, E: float(ops.load_balance_loss(torch.from_numpy(p), torch.from_numpy(idx), E)),
        lambda p, local: float(ops.locality_loss(torch.from_numpy(p).log(), torch.from_numpy(local))),
        lambda chosen: ops.combine_weights(torch.from_numpy(chosen)).numpy(),
    )


def test_load_balance_loss_per_block(rng):
    """[blocks, T, E] at once: each block's loss as the reference computes it on that block alone."""
    shared.check_load_balance_loss_per_block(
        rng, lambda p, idx, E: ops.load_balance_loss(torch.from_numpy(p), torch.from_numpy(idx), E).numpy()
    )


@pytest.mark.parametrize("q", [1.0, 0.75, 0.5, 0.1, 0.999])
def test_expert_angles_bit_identical_to_numpy(rng, q):
    E = 16
    expert = rng.integers(0, E - 3, size=int(rng.integers(1, 3000)))  # some experts get no copy
    angles = np.round(rng.random(expert.size) * 1.5, 3)  # ties included
    delta, seen = ops.expert_angles(torch.from_numpy(angles), torch.from_numpy(expert), E, q)
    ref_delta, ref_seen = ref.expert_angles(angles, expert, E, q)
    np.testing.assert_array_equal(seen.numpy(), ref_seen)
    np.testing.assert_array_equal(delta.numpy(), ref_delta)  # exact, not approximately


def test_update_angle_ema_bit_identical_to_numpy(rng):
    E = 8
    delta = rng.random(E)
    seen = rng.random(E) < 0.7
    first = ops.update_angle_ema(
        torch.full((E,), float("nan"), dtype=torch.float64), torch.from_numpy(delta), torch.from_numpy(seen), 0.9
    )
    np.testing.assert_array_equal(first.numpy(), ref.update_angle_ema(None, delta, seen, 0.9))
    prev = rng.random(E)
    later = ops.update_angle_ema(torch.from_numpy(prev), torch.from_numpy(delta), torch.from_numpy(seen), 0.9)
    np.testing.assert_array_equal(later.numpy(), ref.update_angle_ema(prev, delta, seen, 0.9))


# ----------------------------------------------------------------------------- issue-14 options
from backends.torch import routing_extras as extras  # noqa: E402
from backends.torch.moe_ops import TorchOps  # noqa: E402
from locmoe.parallel.topology import ExpertPlacement, Topology  # noqa: E402


def _table(E=16, nodes=4):
    t = ref.node_expert_table(ExpertPlacement.round_robin(E, Topology(nodes, 1)))
    node_of = np.zeros(E, np.int64)
    node_of[t.reshape(-1)] = np.repeat(np.arange(nodes), t.shape[1])
    return t, torch.from_numpy(t), torch.from_numpy(node_of)


@pytest.mark.parametrize("how", ["max", "top2_sum"])
@pytest.mark.parametrize("ties", [False, True])
def test_node_limited_top_k(rng, how, ties):
    p, allowed = shared.node_limited_inputs(rng, ties)
    table, t_table, node_of = _table()
    sel = ref.selection_scores(p, None, allowed)
    tsel = extras.selection_scores(torch.from_numpy(p), None, torch.from_numpy(allowed))
    for m in (1, 2, 4):
        for k in (1, 2):
            got = extras.node_limited_top_k(tsel, k, m, t_table, node_of, how).numpy()
            np.testing.assert_array_equal(got, ref.node_limited_top_k(sel, k, m, table, how))


def test_selection_bias_and_its_update(rng):
    p = shared.probs_of(rng)
    bias = (rng.standard_normal(8) * 0.1).astype(np.float32)
    got = ops.top_k(extras.selection_scores(torch.from_numpy(p), torch.from_numpy(bias), None), 2).numpy()
    np.testing.assert_array_equal(got, ref.top_k(ref.selection_scores(p, bias, None), 2)[0])

    class R(torch.nn.Module):  # the two attributes the update reads
        router_cfg = type("C", (), {"bias_update_rate": 1e-3})()

    r = R()
    r.register_buffer("selection_bias", torch.from_numpy(bias.copy()))
    load = rng.integers(0, 30, 8)
    extras.update_selection_bias_(r, torch.from_numpy(load))
    # float32 state: 1e-7 of a bias of ~0.1
    np.testing.assert_allclose(
        r.selection_bias.numpy(), ref.update_selection_bias(bias.astype(np.float64), load, 1e-3), atol=1e-7
    )
    r.eval()
    before = r.selection_bias.clone()
    extras.update_selection_bias_(r, torch.from_numpy(load))
    assert torch.equal(r.selection_bias, before)  # evaluation leaves the bias alone


def test_paper_gate_sigmoid_z_loss_and_batch_locality(rng):
    s = rng.standard_normal((40, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(
        paper_gate(TorchOps(), torch.from_numpy(s), "relu", torch.from_numpy(b)).numpy(),
        ref.paper_gate(s, "relu", b),
        atol=1e-6,
    )
    z = s.copy()
    z[:, 3] = -np.inf
    aff, probs, _ = extras.affinities("sigmoid", torch.from_numpy(z))
    want = ref.sigmoid(z.astype(np.float64))
    np.testing.assert_allclose(aff.numpy(), want, atol=1e-7)
    np.testing.assert_allclose(probs.numpy(), want / want.sum(1, keepdims=True), atol=1e-7)
    zd = torch.from_numpy(z.astype(np.float64))
    assert float(extras.router_z_loss(zd)) == pytest.approx(ref.router_z_loss(z.astype(np.float64)), rel=1e-6)
    p = shared.probs_of(rng).astype(np.float64)
    local = np.zeros((40, 8), bool)
    local[:20, :4] = True
    local[20:, 4:] = True
    got = float(extras.batch_locality_loss(torch.from_numpy(p), torch.from_numpy(local), None, 2, 0.01))
    assert got == pytest.approx(ref.batch_locality_loss(p, local, None, np.repeat([0, 1], 20), 0.01), abs=1e-12)


def test_belong_probability_on_the_device_matches_scipy():
    """The finite Wallis sum against scipy's betainc: 1e-10 relative where p > 1e-3 (measured ≤ 5e-12)."""
    for d in (2, 3, 4, 5, 16, 63, 256, 1024, 5120):
        for delta in (0.0, 1e-4, 0.03, 0.1, 0.3, 0.6, 0.99, 1.0):
            want = ref.belong_probability(delta, d)
            got = float(extras.belong_probability(torch.tensor(delta, dtype=torch.float64), d))
            if want > 1e-3:
                assert got == pytest.approx(want, rel=1e-10), (d, delta)
            else:
                assert got == pytest.approx(want, abs=1e-12), (d, delta)


def test_paper_capacity_and_delta_state_match_numpy(rng):
    for _ in range(200):
        d, n, k, T = (
            int(rng.integers(2, 2048)),
            int(rng.integers(2, 64)),
            int(rng.integers(1, 3)),
            int(rng.integers(1, 5000)),
        )
        delta = float(rng.random() ** 2)
        for form in ("exact", "exp"):
            got = int(extras.paper_capacity(torch.tensor(delta, dtype=torch.float64), d, n, k, T, form))
            assert got == ref.paper_capacity(delta, d, n, k, T, form), (delta, d, n, k, T, form)
    delta, seen = rng.random(8), rng.random(8) < 0.6
    seen[0] = True
    nan = torch.full((8,), float("nan"), dtype=torch.float64)
    for schedule in ("first_batch", "ema"):
        got = extras.update_paper_delta(nan, torch.from_numpy(delta), torch.from_numpy(seen), schedule, 0.9)
        np.testing.assert_array_equal(got.numpy(), ref.update_paper_delta(None, delta, seen, schedule, 0.9))
    cap = torch.tensor([3, 4, 5])
    np.testing.assert_array_equal(
        ops.unseen_fallback(cap, torch.tensor([0.1, float("nan"), 0.2]), 9).numpy(),
        ref.unseen_fallback(cap.numpy(), np.array([0.1, np.nan, 0.2]), 9),
    )
    x = rng.standard_normal((12, 32))
    w = ref.grap_gate_matrix(32, 8)
    np.testing.assert_allclose(
        extras.cosine_deviation(torch.from_numpy(x), torch.from_numpy(w)).numpy(),
        ref.cosine_deviation(x, w),
        atol=1e-12,
    )


def test_options_have_no_data_dependent_shapes():
    """Every option runs on the meta device, which has no data: a host read (.item(), bool(), nonzero,
    boolean-mask indexing, bincount) or a data-dependent shape would fail here, and on CUDA would be a sync."""
    meta = torch.device("meta")
    T, E = 64, 16
    p = torch.empty(T, E, device=meta)
    allowed = torch.empty(T, E, dtype=torch.bool, device=meta)
    _, t_table, node_of = _table()
    sel = extras.selection_scores(p, torch.empty(E, device=meta), allowed)
    assert extras.node_limited_top_k(sel, 2, 1, t_table.to(meta), node_of.to(meta), "top2_sum").shape == (T, 2)
    assert paper_gate(TorchOps(), p, "relu", torch.empty(E, device=meta)).shape == (T, E)
    assert extras.affinities("sigmoid", p)[0].shape == (T, E)
    assert extras.router_z_loss(p).shape == ()
    assert extras.batch_locality_loss(p, allowed, allowed, 4, 0.01).shape == ()
    delta = torch.empty((), dtype=torch.float64, device=meta)
    for form in ("exact", "exp"):
        assert extras.paper_capacity(delta, 256, E, 2, 4096, form).shape == ()
    state = torch.empty(E, dtype=torch.float64, device=meta)
    seen = torch.empty(E, dtype=torch.bool, device=meta)
    assert extras.update_paper_delta(state, state, seen, "first_batch", 0.9).shape == (E,)
    assert ops.unseen_fallback(torch.empty(E, dtype=torch.long, device=meta), state, 5).shape == (E,)
    assert ops.update_angle_ema(state, state, seen, 0.9).shape == (E,)
