"""Intra-node-first selection and capacity admission on hand-computed cases."""

import numpy as np

from locmoe.routing import admit, intra_node_first

# experts 0, 1 live on the token's node; 2, 3 on the other node
LOCAL = np.array([[True, True, False, False]])
PROBS = np.array([[0.15, 0.05, 0.5, 0.3]])


def test_rho_one_is_plain_top_k():
    np.testing.assert_array_equal(intra_node_first(PROBS, 2, LOCAL, 1.0), [[2, 3]])


def test_one_local_candidate_replaces_the_lowest_remote_choice():
    # p_(k) = 0.3; rho 0.5 -> threshold 0.15: expert 0 qualifies (0.15 >= 0.15), expert 1 does not
    np.testing.assert_array_equal(intra_node_first(PROBS, 2, LOCAL, 0.5), [[2, 0]])


def test_threshold_not_met_keeps_top_k():
    np.testing.assert_array_equal(intra_node_first(PROBS, 2, LOCAL, 0.6), [[2, 3]])


def test_several_candidates_replace_remote_choices_best_first():
    # threshold 0.03: both local experts qualify and replace both remote choices
    np.testing.assert_array_equal(intra_node_first(PROBS, 2, LOCAL, 0.1), [[0, 1]])


def test_no_remote_choice_means_nothing_to_replace():
    probs = np.array([[0.4, 0.35, 0.15, 0.1]])
    np.testing.assert_array_equal(intra_node_first(probs, 2, LOCAL, 0.1), [[0, 1]])


def test_admission_priority_on_rank_then_in_node_then_probability_then_id():
    expert = np.array([0, 0, 0, 0, 1])
    prob = np.array([0.9, 0.1, 0.5, 0.5, 0.2])
    locality = np.array([2, 0, 1, 1, 2])
    kept = admit(expert, prob, locality, np.array([2, 0]))
    # expert 0 (capacity 2): on-rank copy 1 first, then in-node copies 2 and 3 tie on p -> copy 2 (lower id);
    # the cross-node copy 0 is dropped despite the highest p. Expert 1 admits nothing.
    np.testing.assert_array_equal(kept, [False, True, True, False, False])
