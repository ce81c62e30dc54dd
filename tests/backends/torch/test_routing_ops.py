"""Each torch routing op against its numpy twin in ``locmoe.routing`` on random inputs (exact decisions)."""
import numpy as np
import pytest
import torch

from backends.torch import routing_ops as ops
from locmoe import routing as ref


@pytest.fixture(params=range(5))
def rng(request):
    return np.random.default_rng(request.param)


def probs_of(rng, T=40, E=8, scale=2.0):
    z = rng.standard_normal((T, E)) * scale
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p.astype(np.float32)


def test_grap_and_angles(rng):
    x = rng.standard_normal((10, 32)).astype(np.float32)
    s = ops.grap_scores(torch.from_numpy(x), 8).numpy()
    np.testing.assert_allclose(s, ref.grap_scores(x.astype(np.float64), 8), atol=1e-6)
    a = ops.gate_angles(torch.from_numpy(s).double(), torch.eye(8, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(a, ref.gate_angles(s.astype(np.float64), np.eye(8)), atol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_and_intra_node_first(rng, ties):
    p = probs_of(rng)
    if ties:
        p = np.round(p, 1).astype(np.float32)
    local = rng.random((40, 8)) < 0.4
    np.testing.assert_array_equal(ops.top_k(torch.from_numpy(p), 3).numpy(), ref.top_k(p, 3)[0])
    for rho in (0.1, 0.5, 1.0):
        got = ops.intra_node_first(torch.from_numpy(p), 3, torch.from_numpy(local), rho).numpy()
        np.testing.assert_array_equal(got, ref.intra_node_first(p, 3, local, rho))


def test_admission(rng):
    C, E = 200, 8
    expert = rng.integers(0, E, C)
    prob = np.round(rng.random(C), 2).astype(np.float32)       # ties on purpose
    locality = rng.integers(0, 3, C)
    capacity = rng.integers(0, 40, E)
    got = ops.admit(*(torch.from_numpy(a) for a in (expert, prob, locality, capacity))).numpy()
    np.testing.assert_array_equal(got, ref.admit(expert, prob, locality, capacity))


def test_expert_choice(rng):
    p = probs_of(rng)
    p[rng.random(p.shape) < 0.2] = 0.0
    t, e = ops.expert_choice(torch.from_numpy(p), 7)
    rt, re = ref.expert_choice(p, 7)
    np.testing.assert_array_equal(t.numpy(), rt)
    np.testing.assert_array_equal(e.numpy(), re)


def test_losses_and_weights(rng):
    p = probs_of(rng).astype(np.float64)
    idx = ref.top_k(p, 2)[0]
    local = rng.random(p.shape) < 0.3
    pt = torch.from_numpy(p)
    assert float(ops.load_balance_loss(pt, torch.from_numpy(idx), 8)) == pytest.approx(
        ref.load_balance_loss(p, idx, 8), abs=1e-12)
    assert float(ops.locality_loss(pt.log(), torch.from_numpy(local))) == pytest.approx(
        ref.locality_loss(np.log(p), local), abs=1e-12)
    chosen = np.take_along_axis(p, idx, 1)
    np.testing.assert_allclose(ops.combine_weights(torch.from_numpy(chosen)).numpy(), ref.combine_weights(chosen))


@pytest.mark.parametrize("q", [1.0, 0.75, 0.5, 0.1, 0.999])
def test_expert_angles_bit_identical_to_numpy(rng, q):
    E = 16
    expert = rng.integers(0, E - 3, size=int(rng.integers(1, 3000)))    # some experts get no copy
    angles = np.round(rng.random(expert.size) * 1.5, 3)                  # ties included
    delta, seen = ops.expert_angles(torch.from_numpy(angles), torch.from_numpy(expert), E, q)
    ref_delta, ref_seen = ref.expert_angles(angles, expert, E, q)
    np.testing.assert_array_equal(seen.numpy(), ref_seen)
    np.testing.assert_array_equal(delta.numpy(), ref_delta)               # exact, not approximately


def test_update_angle_ema_bit_identical_to_numpy(rng):
    E = 8
    delta = rng.random(E)
    seen = rng.random(E) < 0.7
    first = ops.update_angle_ema(torch.full((E,), float("nan"), dtype=torch.float64), torch.from_numpy(delta),
                                 torch.from_numpy(seen), 0.9)
    np.testing.assert_array_equal(first.numpy(), ref.update_angle_ema(None, delta, seen, 0.9))
    prev = rng.random(E)
    later = ops.update_angle_ema(torch.from_numpy(prev), torch.from_numpy(delta), torch.from_numpy(seen), 0.9)
    np.testing.assert_array_equal(later.numpy(), ref.update_angle_ema(prev, delta, seen, 0.9))
