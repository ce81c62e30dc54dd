"""Sequence placement (``locmoe.data.placement``): a balanced deal of the step's sequences to the nodes, the best
one with two nodes, deterministic, and the same rows whether one process holds the whole group or its ranks
all-gather their preferences."""

import itertools

import numpy as np
import pytest

from locmoe.data.placement import SequencePlacer, place_sequences


def balanced(order, nodes, per_node):
    home = np.empty(len(order), dtype=int)
    home[order] = np.repeat(np.arange(nodes), per_node)
    return home


@pytest.mark.parametrize("nodes,per_node", [(2, 3), (3, 2), (4, 4), (2, 1)])
def test_every_node_gets_its_share_and_every_sequence_one_row(nodes, per_node):
    pref = np.random.default_rng(nodes * 10 + per_node).random((nodes * per_node, nodes))
    order = place_sequences(pref, per_node)
    assert sorted(order) == list(range(nodes * per_node))
    assert np.array_equal(order, place_sequences(pref.copy(), per_node))  # deterministic
    assert np.all(np.bincount(balanced(order, nodes, per_node), minlength=nodes) == per_node)


def test_two_nodes_get_the_best_balanced_split():
    """Against every split of 8 sequences into 4 + 4: the highest total preference (to 1e-12)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        pref = rng.random((8, 2))
        home = balanced(place_sequences(pref, 4), 2, 4)
        best = max(
            sum(pref[s, 0] for s in a) + sum(pref[s, 1] for s in set(range(8)) - set(a))
            for a in itertools.combinations(range(8), 4)
        )
        assert pref[np.arange(8), home].sum() == pytest.approx(best, abs=1e-12)


def test_a_node_everyone_prefers_still_gets_only_its_share():
    """Preferences relative to each sequence's mean: the sequences that prefer node 0 the most win its rows."""
    pref = np.array([[0.9, 0.1], [0.6, 0.4], [0.99, 0.01], [0.7, 0.3]])
    home = balanced(place_sequences(pref, 2), 2, 2)
    assert home.tolist() == [0, 1, 0, 1]
    assert place_sequences(pref, 2)[:2].tolist() == [0, 2]  # inside a node, drawn order


def test_ties_are_dealt_by_index():
    order = place_sequences(np.full((4, 2), 0.5), 2)
    assert order.tolist() == [0, 1, 2, 3]


def test_wrong_row_count_is_refused():
    with pytest.raises(ValueError, match="6 sequences for 2 nodes x 2 rows"):
        place_sequences(np.zeros((6, 2)), 2)


class Sampler:
    """A stand-in for BatchSampler: row r of the global batch is the sequence [r, r, ...]."""

    def __init__(self, batch_per_rank, rank=0, world=1):
        self.batch_per_rank, self.rank, self.world = batch_per_rank, rank, world

    def batch(self, step, micro=0, split="train", rows=None):
        B = self.batch_per_rank
        rows = np.arange(self.rank * B, (self.rank + 1) * B) if rows is None else np.asarray(rows)
        assert len(rows) == B
        x = np.repeat(rows[:, None], 3, axis=1) + 100 * step
        return x, x + 1, np.zeros(B, dtype=np.int64)


def preference(x, d):
    """A preference that moves every row: even sequences like node 1, odd ones node 0."""
    seq = x[:, 0] % 100
    return np.stack([seq % 2, 1 - seq % 2], axis=1).astype(np.float32)


def test_ranks_gathering_their_preferences_get_the_one_process_rows():
    """2 nodes x 2 ranks x 2 rows: four placers with an all-gather over stand-in ranks deal exactly the rows
    the one process holding all 8 deals, each rank B of them."""
    one = SequencePlacer(Sampler(8), 2, preference, lambda a: a).batch(5)[0]
    samplers = [Sampler(2, r, 4) for r in range(4)]
    gather = lambda a: np.concatenate([preference(s.batch(5)[0], None) for s in samplers])  # noqa: E731
    ranks = [SequencePlacer(s, 2, preference, gather, group_rank=r).batch(5)[0] for r, s in enumerate(samplers)]
    assert all(len(r) == 2 for r in ranks)
    assert np.array_equal(np.concatenate(ranks), one)
    assert sorted(one[:, 0] - 500) == list(range(8))  # the same sequences as drawn, moved
    assert set(one[:4, 0] % 2) == {1} and set(one[4:, 0] % 2) == {0}  # node 0 holds the odd ones
