"""The device ops that replaced host syncs compute exactly what they replaced (issue 13): scatter-add counts
against ``torch.bincount``, the packed one-sort admission order against three stable sorts, the quantile
rule's capacities against the numpy reference, GrAP's basis angles against the identity-matrix form, and the
experts' zero-weight tail for dropped copies. Exact equality throughout: these are integer counts, orders and
float64 ops in the same order."""

import numpy as np
import pytest
import torch

from backends.torch import routing_ops as ops
from backends.torch.experts import GroupedExperts
from locmoe.routing import capacity as cap

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("trial", range(20))
def test_counts_of_is_bincount(trial):
    n = int(RNG.integers(1, 40))
    idx = torch.from_numpy(RNG.integers(0, n, int(RNG.integers(0, 500))))
    where = torch.from_numpy(RNG.random(idx.numel()) < 0.6)
    assert torch.equal(ops.counts_of(idx, n), torch.bincount(idx, minlength=n))
    assert torch.equal(ops.counts_of(idx, n, where), torch.bincount(idx[where], minlength=n))


def _three_sorts(expert, prob, locality):
    order = torch.sort(-prob, stable=True).indices
    order = order[torch.sort(locality[order], stable=True).indices]
    return order[torch.sort(expert[order], stable=True).indices]


@pytest.mark.parametrize("trial", range(40))
def test_packed_admission_order_equals_three_stable_sorts(trial):
    C, E = int(RNG.integers(1, 3000)), int(RNG.integers(1, 70))
    expert = torch.from_numpy(RNG.integers(0, E, C))
    # half the trials draw probabilities from a few values, so that ties (broken by copy id) are common
    prob = torch.from_numpy((RNG.integers(0, 20, C) / 19 if trial % 2 else RNG.random(C)).astype(np.float32))
    locality = torch.from_numpy(RNG.integers(0, 3, C))
    assert torch.equal(ops.admission_order(expert, prob, locality), _three_sorts(expert, prob, locality))


@pytest.mark.parametrize("trial", range(20))
def test_per_expert_bound_equals_numpy(trial):
    E, k, T = int(RNG.integers(2, 65)), int(RNG.integers(1, 3)), int(RNG.integers(1, 5000))
    inside = RNG.integers(0, 50, E).astype(np.float64) * (trial % 5 != 0)  # some trials: nothing inside
    slack = float(RNG.uniform(1.0, 1.3))
    shares = (
        cap.empirical_cone_shares(np.zeros((1, E)), np.full(E, -1.0)) if inside.sum() == 0 else inside / inside.sum()
    )
    expected = cap.per_expert_bound(shares, k, T, slack)
    got = ops.per_expert_bound(torch.from_numpy(inside), k, T, slack).numpy()
    np.testing.assert_array_equal(got, expected)


def test_basis_angles_equal_identity_gate_angles():
    v = torch.from_numpy(RNG.standard_normal((300, 16)))
    v[:5] = 0.0  # zero vectors: π/2
    assert torch.equal(ops.basis_angles(v), ops.gate_angles(v, torch.eye(16, dtype=torch.float64)))


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_dropped_tail_rows_are_zero_and_pass_back_zero(activation):
    torch.manual_seed(0)
    experts = GroupedExperts(4, 16, 8, activation, "grouped")
    experts.reset_parameters(0.2)
    counts = torch.tensor([3, 0, 5, 2])
    x = torch.randn(14, 16, requires_grad=True)  # 10 kept rows, then 4 dropped
    y = experts(x, counts, dropped_tail=True)
    assert torch.equal(y[10:], torch.zeros(4, 16))
    kept = x.detach()[:10].clone().requires_grad_(True)
    ref = GroupedExperts(4, 16, 8, activation, "loop")
    ref.load_state_dict(experts.state_dict())
    y_ref = ref(kept, counts)
    torch.testing.assert_close(y[:10], y_ref, rtol=1e-6, atol=1e-6)  # fp32: GEMM blocking may differ
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g[:10])
    assert torch.equal(x.grad[10:], torch.zeros(4, 16))
    torch.testing.assert_close(x.grad[:10], kept.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(experts.w2.grad, ref.w2.grad, rtol=1e-5, atol=1e-6)
