"""Capacity: cap fractions, gate-space angles, the cone and quantile bounds, the factor rule."""

import math

import numpy as np
import pytest

from locmoe.routing import (
    cap_fraction,
    capacity_lower_bound,
    cone_shares,
    empirical_cone_shares,
    expert_angles,
    factor_capacity,
    gate_angles,
    per_expert_bound,
    update_angle_ema,
)


def test_cap_fraction_closed_forms():
    # S^1 (n = 2): the arc within δ of a point is 2δ of 2π -> δ/π.
    np.testing.assert_allclose(
        cap_fraction(2, np.array([math.pi / 4, math.pi / 2, 3 * math.pi / 4, math.pi])),
        [0.25, 0.5, 0.75, 1.0],
        atol=1e-12,
    )
    # S^2 (n = 3): Archimedes, (1 - cos δ)/2.
    deltas = np.array([0.0, math.pi / 3, 2.0, 3.0])
    np.testing.assert_allclose(cap_fraction(3, deltas), (1 - np.cos(deltas)) / 2, atol=1e-12)
    with pytest.raises(ValueError, match="dimension >= 2"):
        cap_fraction(1, 0.3)


def test_gate_angles():
    a = gate_angles(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), np.eye(2))
    np.testing.assert_allclose(a, [[0, math.pi / 2], [math.pi / 4, math.pi / 4], [math.pi / 2, math.pi / 2]])


def test_expert_angles_max_and_quantile():
    angles = np.array([0.1, 0.5, 0.3, 0.2])
    expert = np.array([0, 0, 0, 2])
    delta, seen = expert_angles(angles, expert, 3)
    np.testing.assert_array_equal(delta, [0.5, 0.0, 0.2])
    np.testing.assert_array_equal(seen, [True, False, True])
    delta, _ = expert_angles(angles, expert, 3, quantile=0.5)
    np.testing.assert_allclose(delta, [0.3, 0.0, 0.2])


def test_angle_ema_keeps_unseen_experts():
    ema = update_angle_ema(None, np.array([1.0, 2.0]), np.array([True, True]), 0.9)
    np.testing.assert_array_equal(ema, [1.0, 2.0])
    ema = update_angle_ema(ema, np.array([2.0, 0.0]), np.array([True, False]), 0.9)
    np.testing.assert_allclose(ema, [1.1, 2.0])


def test_cone_bound_equal_cones_give_the_mean_load():
    assert capacity_lower_bound(np.full(8, 1.2), 8, 2, 1000) == 250  # k*T/E exactly


def test_cone_bound_hand_case():
    # n = 2: A = [0.5, 0.25] -> shares [2/3, 1/3] -> C = ceil(1 * 9 * 2/3) = 6
    np.testing.assert_allclose(cone_shares(np.array([math.pi / 2, math.pi / 4]), 2), [2 / 3, 1 / 3])
    assert capacity_lower_bound(np.array([math.pi / 2, math.pi / 4]), 2, 1, 9) == 6
    assert capacity_lower_bound(np.zeros(4), 4, 1, 9) == 3  # empty cones: uniform share
    assert capacity_lower_bound(np.array([math.pi, 0.0]), 2, 2, 5) == 10  # clipped to k*T


def test_empirical_shares_and_per_expert_bound():
    angles = np.array([[0.1, 1.0], [0.2, 1.0], [1.0, 0.1], [0.3, 0.3]])
    # cones 0.25 and 0.5: expert 0 holds tokens 0,1 ; expert 1 holds tokens 2,3 -> shares 1/2, 1/2
    np.testing.assert_allclose(empirical_cone_shares(angles, np.array([0.25, 0.5])), [0.5, 0.5])
    # expert 0 cone 0.35 holds 3 tokens, expert 1 cone 0.2 holds 1 -> 3/4, 1/4
    np.testing.assert_allclose(empirical_cone_shares(angles, np.array([0.35, 0.2])), [0.75, 0.25])
    np.testing.assert_array_equal(per_expert_bound(np.array([0.75, 0.25]), 2, 4, 1.05), [7, 3])


def test_factor_capacity():
    assert factor_capacity(1.25, 2, 100, 8) == 32  # 31.25 -> 32
    assert factor_capacity(1.0, 2, 64, 8) == 16  # exact, no float round-up
    assert factor_capacity(0.01, 1, 10, 8) == 1
