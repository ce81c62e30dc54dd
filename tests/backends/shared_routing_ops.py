"""What both backends' routing-op tests share: the seeded ``rng`` fixture, random router probabilities, and
the checks of an op against its numpy twin in ``locmoe.routing``. Each backend passes the op as a function
from numpy arrays to numpy arrays (building its tensors, calling its op, reading the result back)."""

from __future__ import annotations

import numpy as np
import pytest

from locmoe import routing as ref


@pytest.fixture(params=range(5))
def rng(request):
    return np.random.default_rng(request.param)


def probs_of(rng, T=40, E=8, scale=2.0):
    z = rng.standard_normal((T, E)) * scale
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p.astype(np.float32)


def check_admission(rng, admit):
    """``admit(expert, prob, locality, capacity)`` -> kept mask, with ties in ``prob`` on purpose; returns the
    inputs (expert, prob, locality) for further checks."""
    C, E = 200, 8
    expert = rng.integers(0, E, C)
    prob = np.round(rng.random(C), 2).astype(np.float32)  # ties on purpose
    locality = rng.integers(0, 3, C)
    capacity = rng.integers(0, 40, E)
    np.testing.assert_array_equal(admit(expert, prob, locality, capacity), ref.admit(expert, prob, locality, capacity))
    return expert, prob, locality


def check_expert_choice(rng, expert_choice):
    """``expert_choice(p, capacity)`` -> (token ids, expert ids), with some zero probabilities."""
    p = probs_of(rng)
    p[rng.random(p.shape) < 0.2] = 0.0
    t, e = expert_choice(p, 7)
    rt, re = ref.expert_choice(p, 7)
    np.testing.assert_array_equal(t, rt)
    np.testing.assert_array_equal(e, re)


def check_losses_and_weights(rng, load_balance_loss, locality_loss, combine_weights):
    """``load_balance_loss(p, idx, E)``, ``locality_loss(p, local)`` (of log p) -> float; ``combine_weights``."""
    p = probs_of(rng).astype(np.float64)
    idx = ref.top_k(p, 2)[0]
    local = rng.random(p.shape) < 0.3
    assert load_balance_loss(p, idx, 8) == pytest.approx(ref.load_balance_loss(p, idx, 8), abs=1e-12)
    assert locality_loss(p, local) == pytest.approx(ref.locality_loss(np.log(p), local), abs=1e-12)
    chosen = np.take_along_axis(p, idx, 1)
    np.testing.assert_allclose(combine_weights(chosen), ref.combine_weights(chosen))


def check_load_balance_loss_per_block(rng, load_balance_loss):
    """[blocks, T, E] at once: each block's loss as the reference computes it on that block alone."""
    p = probs_of(rng, T=48).astype(np.float64)
    idx = ref.top_k(p, 2)[0]
    got = load_balance_loss(p.reshape(4, 12, 8), idx.reshape(4, 12, 2), 8)
    want = [ref.load_balance_loss(p[b * 12 : (b + 1) * 12], idx[b * 12 : (b + 1) * 12], 8) for b in range(4)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def probs_with_ties(rng, ties: bool, E=8):
    """``probs_of(rng, E=E)``, rounded to one decimal (many ties) when ``ties``."""
    p = probs_of(rng, E=E)
    if ties:
        p = np.round(p, 1).astype(np.float32)
    return p


def node_limited_inputs(rng, ties: bool):
    """(probabilities over 16 experts, allowed mask with a usable expert on each node of 4 round-robin nodes)."""
    p = probs_with_ties(rng, ties, E=16)
    allowed = rng.random(p.shape) < 0.7
    allowed[:, [0, 8]] = True  # a usable expert on each node
    return p, allowed
