"""GrAP gate, softmax, top-k and the auxiliary losses on hand-computed cases."""

import math

import numpy as np
import pytest

from locmoe.routing import (
    combine_weights,
    dense_gate_scores,
    grap_gate_matrix,
    grap_scores,
    load_balance_loss,
    locality_loss,
    log_softmax,
    masked_logits,
    softmax,
    sort_choices,
    top_k,
)


def test_grap_scores_are_group_means():
    x = np.array([[1.0, 2, 3, 4, 5, 6, 7, 8]])
    np.testing.assert_array_equal(grap_scores(x, 4), [[1.5, 3.5, 5.5, 7.5]])
    np.testing.assert_array_equal(grap_scores(x, 2), [[2.5, 6.5]])


def test_grap_equals_a_fixed_gate_with_orthogonal_columns():
    w = grap_gate_matrix(8, 4)
    np.testing.assert_array_equal(w[:, 1], [0, 0, 0.5, 0.5, 0, 0, 0, 0])
    gram = w.T @ w
    np.testing.assert_array_equal(gram, np.diag(np.full(4, 0.5)))  # orthogonal columns
    x = np.random.default_rng(0).standard_normal((5, 8))
    np.testing.assert_allclose(grap_scores(x, 4), dense_gate_scores(x, w), rtol=0, atol=1e-15)


def test_grap_needs_e_to_divide_d():
    with pytest.raises(ValueError, match=r"num_experts \(3\) to divide the hidden size \(8\)"):
        grap_scores(np.zeros((1, 8)), 3)


def test_masked_softmax():
    z = masked_logits(np.array([[0.0, 2 * math.log(2), 5.0]]), temperature=2.0, allowed=np.array([[True, True, False]]))
    np.testing.assert_allclose(softmax(z), [[1 / 3, 2 / 3, 0.0]], atol=1e-15)
    assert log_softmax(z)[0, 2] == -np.inf


def test_top_k_orders_best_first_and_breaks_ties_by_lower_id():
    idx, vals = top_k(np.array([[0.25, 0.25, 0.5, 0.0]]), 2)
    np.testing.assert_array_equal(idx, [[2, 0]])
    np.testing.assert_array_equal(vals, [[0.5, 0.25]])
    np.testing.assert_array_equal(sort_choices(np.array([[0.25, 0.25, 0.5]]), np.array([[1, 2, 0]])), [[2, 0, 1]])


def test_combine_weights_renormalise_only_for_k_above_one():
    np.testing.assert_allclose(combine_weights(np.array([[0.5, 0.25]])), [[2 / 3, 1 / 3]])
    np.testing.assert_array_equal(combine_weights(np.array([[0.4]])), [[0.4]])


def test_load_balance_loss_hand_case():
    probs = np.array([[0.8, 0.2], [0.6, 0.4]])
    # f = [1, 0] (both tokens chose expert 0), P = [0.7, 0.3] -> E * f.P = 2 * 0.7
    assert load_balance_loss(probs, np.array([[0], [0]]), 2) == pytest.approx(1.4, abs=1e-15)
    uniform = np.full((4, 4), 0.25)
    assert load_balance_loss(uniform, np.array([[0, 1], [2, 3], [0, 1], [2, 3]]), 4) == pytest.approx(1.0)


def test_locality_loss_hand_case():
    logp = np.log(np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    local = np.array([[True, True, False], [False, False, False]])
    # token 0: KL(U{0,1} || p) = -ln 2 - (ln .5 + ln .25)/2 = ln(2)/2 ; token 1 has no local expert: 0
    assert locality_loss(logp, local) == pytest.approx(math.log(2) / 4, abs=1e-15)
    # p uniform over the local experts exactly -> KL = 0
    assert locality_loss(np.log(np.array([[0.5, 0.5, 1e-300]])), np.array([[True, True, False]])) == pytest.approx(
        0.0, abs=1e-15
    )
