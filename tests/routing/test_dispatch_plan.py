"""The dispatch plan on a hand-built case: 2 nodes x 2 ranks, expert e on rank e, one token per rank."""

import numpy as np

from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing import build_dispatch_plan, chunk_permutation

PLACEMENT = ExpertPlacement.contiguous(4, Topology(2, 2))
# token t lives on rank t; its two choices:
CHOICES = np.array([[0, 2], [3, 0], [2, 1], [2, 3]])
TOKEN = np.repeat(np.arange(4), 2)
EXPERT = CHOICES.reshape(-1)
PROB = np.array([0.6, 0.4, 0.7, 0.3, 0.9, 0.1, 0.5, 0.5])


def plan(capacity):
    return build_dispatch_plan(TOKEN, EXPERT, PROB, PROB, np.arange(4), PLACEMENT, np.array(capacity), 4)


def test_classes_counts_and_orders():
    p = plan([8, 8, 8, 8])
    np.testing.assert_array_equal(p.locality, [0, 2, 2, 1, 0, 2, 1, 0])
    np.testing.assert_array_equal(p.send_counts(), [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(p.recv_counts()[2, :, 0], [1, 0, 1, 1])
    np.testing.assert_array_equal(p.send_order(1), [3, 2])  # to rank 0 first, then rank 3
    np.testing.assert_array_equal(p.combine_order(1), [1, 0])
    np.testing.assert_array_equal(p.expert_order(2), [1, 4, 6])  # expert 2's copies by source rank
    assert p.dropped() == 0
    assert p.locality_fractions() == {"on_rank": 3 / 8, "in_node": 2 / 8, "cross_node": 3 / 8}


def test_traffic_flat_and_hierarchical():
    p = plan([8, 8, 8, 8])
    flat = p.traffic(10, "flat")
    np.testing.assert_array_equal(flat["intra_node"], [0, 10, 0, 10])
    np.testing.assert_array_equal(flat["cross_node"], [10, 10, 10, 0])
    hier = p.traffic(10, "hierarchical")
    # copy 3 (rank 1 -> 0) stays in node; copy 5 (rank 2 -> 1) relays through rank 3, which carries it across
    np.testing.assert_array_equal(hier["intra_node"], [0, 10, 10, 10])
    np.testing.assert_array_equal(hier["cross_node"], [10, 10, 0, 10])


def test_capacity_drops_the_cross_node_copy_first():
    p = plan([8, 8, 2, 8])  # expert 2 gets copies 1 (cross), 4 (on-rank), 6 (in-node)
    np.testing.assert_array_equal(p.kept, [True, False, True, True, True, True, True, True])
    np.testing.assert_array_equal(p.admitted(), [2, 1, 2, 2])
    np.testing.assert_array_equal(p.expert_load(), [2, 1, 3, 2])
    assert p.traffic(10, "flat")["cross_node"][0] == 0


def test_chunk_permutation_swaps_the_two_chunk_axes():
    counts = np.array([[2, 1], [0, 3]])  # buffer: a0b0 a0b0 a0b1 a1b1 a1b1 a1b1
    labels = np.array(["00", "00", "01", "11", "11", "11"])
    np.testing.assert_array_equal(labels[chunk_permutation(counts)], ["00", "00", "01", "11", "11", "11"])
    counts = np.array([[1, 2], [2, 1]])  # a0b0 a0b1 a0b1 a1b0 a1b0 a1b1 -> b0: a0 a1 a1, b1: a0 a0 a1
    labels = np.array(["a0b0", "a0b1", "a0b1", "a1b0", "a1b0", "a1b1"])
    np.testing.assert_array_equal(labels[chunk_permutation(counts)], ["a0b0", "a1b0", "a1b0", "a0b1", "a0b1", "a1b1"])
