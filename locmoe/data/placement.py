"""Sequence placement: which node of the expert-parallel group each sequence of a step is trained on.

A token's node is an accident of data-parallel sharding: which rank a sequence lands on is free to choose,
which experts its tokens need is not. ``data.placement: affinity`` draws the step's sequences as usual (the
same global batch as ``drawn``), asks the model where each one's tokens would go — the first MoE layer's
gate probability on each node's experts, averaged over the sequence — and deals the sequences to the nodes
so that every node gets exactly its ranks' share of rows and the total preference is as high as the greedy
rule below makes it. The intra-node-first rule then rarely has to override the gate, and the locality loss
has something it can learn: which kind of sequence lives where. (NetMoE, Liu et al. 2025, places training
samples to cut all-to-all traffic; here the placement is decided from the router before the step.)

``embedding`` asks the same gate about the token embeddings alone: no block runs twice (``affinity`` runs the
blocks below the first MoE layer once more, forward only), at the price of a signal the model must learn to keep.

Deterministic: the rows are a pure function of (seed, step, the model's weights at that step), so a resumed
run places exactly as the uninterrupted one, and every rank computes the same placement from the same
all-gathered preferences. Nothing of what the model computes for a given routing changes: only which rank
holds which sequence.

Legend: R rows of the group's global batch (ranks × batch), N nodes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

PLACEMENTS = ("drawn", "affinity", "embedding")


def place_sequences(pref_RN: np.ndarray, rows_per_node: int) -> np.ndarray:
    """order [R]: the candidate sequence each row of the group's batch takes; rows
    ``n·rows_per_node .. (n+1)·rows_per_node`` lie on node n (its ranks' blocks, rank order).

    Greedy balanced assignment: every (sequence, node) pair in order of the sequence's preference for the
    node relative to its mean preference (highest first; ties: lower sequence, then lower node), taken when
    the sequence is unplaced and the node has room. With two nodes this is exactly the best balanced split
    (sorting by the difference of the two preferences). Inside a node, sequences keep their drawn order.
    """
    R, N = pref_RN.shape
    if R != N * rows_per_node:
        raise ValueError(f"place_sequences: {R} sequences for {N} nodes x {rows_per_node} rows")
    rel = pref_RN - pref_RN.mean(axis=1, keepdims=True)
    seq, node = np.divmod(np.arange(R * N), N)
    # lexsort's last key is the primary one: -rel descending, then sequence, then node ascending
    pairs = np.lexsort((node, seq, -rel.reshape(-1)))
    home = np.full(R, -1)
    room = np.full(N, rows_per_node)
    for p in pairs:
        s, n = seq[p], node[p]
        if home[s] < 0 and room[n]:
            home[s], room[n] = n, room[n] - 1
    return np.argsort(home, kind="stable")


class SequencePlacer:
    """The rows of a step for this process: its share of the group's sequences, placed by ``preference``.

    ``sampler``: a :class:`~locmoe.data.BatchSampler` (this process's block of the global batch).
    ``preference(x [B, S], domain [B]) -> [B, N]``: the model's node preference of this process's drawn rows.
    ``gather([B, N]) -> [R, N]``: every member's preferences in group order (identity in one process).
    ``group_rank``: this process's place in the expert-parallel group (0 when one process emulates the whole
    group); ``first_rank``: the group's first global rank (its rows' offset).
    """

    def __init__(
        self,
        sampler,
        nodes: int,
        preference: Callable,
        gather: Callable,
        *,
        group_rank: int = 0,
        first_rank: int = 0,
    ):
        self.sampler, self.nodes, self.preference, self.gather = sampler, nodes, preference, gather
        self.group_rank, self.first_rank = group_rank, first_rank

    def batch(self, step: int, micro: int = 0, split: str = "train"):
        """(inputs, targets, domain) of this process, as ``BatchSampler.batch``, with its placed rows."""
        x, _, d = self.sampler.batch(step, micro, split)
        # float32 on the wire: the gate computes in float32, and every backend's gather keeps its bits
        pref = np.asarray(self.gather(np.asarray(self.preference(x, d), dtype=np.float32)), dtype=np.float64)
        B = self.sampler.batch_per_rank
        order = place_sequences(pref, pref.shape[0] // self.nodes)
        mine = order[self.group_rank * B : (self.group_rank + 1) * B] + self.first_rank * B
        return self.sampler.batch(step, micro, split, rows=mine)


def placer_for(cfg, ctx, sampler, preference: Callable, gather: Callable):
    """The job's :class:`SequencePlacer` (None: ``data.placement`` is ``drawn``, or the group has one node).

    ``ctx``: the rank's :class:`locmoe.parallel.context.DistContext`; ``gather`` all-gathers over its
    expert-parallel group (unused when one process emulates the group)."""
    topo = ctx.layout.topology
    if cfg.data.placement == "drawn" or topo.num_nodes < 2:
        return None
    if ctx.emulated or ctx.ep.size == 1:
        return SequencePlacer(sampler, topo.num_nodes, preference, lambda a: a, first_rank=ctx.rank)
    return SequencePlacer(
        sampler,
        topo.num_nodes,
        preference,
        gather,
        group_rank=ctx.ep.my_index,
        first_rank=ctx.layout.ep_group_ranks[0],
    )
