"""Flat and hierarchical (intra-node first, then inter-node) dispatch/combine of token copies.

Both take the send buffer of this rank, laid out destination-major (rank 0's copies first), and return a
``finish`` callable that yields the receive buffer laid out source-major — the same layout for both schemes,
so results are identical. ``S`` is the global [W, W] matrix of kept copies from each source rank (row) to
each destination (column), known on every rank from the gathered routing decisions.

Hierarchical: stage 1 inside the node sends each copy to the rank with its destination's local index;
the relay reorders [source in node][destination node] → [destination node][source in node]; stage 2
among ranks of equal local index carries only the copies bound for other nodes. Combine is the mirror:
stage 2 reversed, then stage 1 reversed. Same scheme and split sizes as ``backends.torch.all_to_all_schemes``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from mindspore import Tensor

from backends.mindspore.collectives import Group, TrafficCounter, all_to_all, all_to_all_start
from backends.mindspore.permute import take_rows
from locmoe.routing.hierarchical_splits import HierarchicalSplits
from locmoe.topology import Topology


class FlatAllToAll:
    def __init__(self, S: np.ndarray, rank: int, group: Group, counter: TrafficCounter | None):
        self.send, self.recv = S[rank].tolist(), S[:, rank].tolist()
        self.group, self.counter = group, counter

    def dispatch(self, x: Tensor) -> Callable[[], Tensor]:
        return all_to_all_start(x, self.send, self.recv, self.group, self.counter, "flat")

    def combine(self, y: Tensor) -> Callable[[], Tensor]:
        return all_to_all_start(y, self.recv, self.send, self.group, self.counter, "flat:combine")


class HierarchicalAllToAll:
    def __init__(self, S: np.ndarray, rank: int, topology: Topology, intra: Group, inter: Group,
                 counter: TrafficCounter | None):
        h = HierarchicalSplits.of(S, rank, topology)
        self.perm1, self.perm2 = h.perm1, h.perm2
        self.send1, self.recv1, self.send2, self.recv2 = h.send1, h.recv1, h.send2, h.recv2
        self.intra, self.inter, self.counter = intra, inter, counter

    def dispatch(self, x: Tensor) -> Callable[[], Tensor]:
        h = all_to_all(_take(x, self.perm1), self.send1, self.recv1, self.intra, self.counter, "stage1")
        return all_to_all_start(_take(h, self.perm2), self.send2, self.recv2, self.inter, self.counter, "stage2")

    def combine(self, y: Tensor) -> Callable[[], Tensor]:
        h = all_to_all(y, self.recv2, self.send2, self.inter, self.counter, "stage2:combine")
        h = _take(h, _inverse(self.perm2))
        finish = all_to_all_start(h, self.recv1, self.send1, self.intra, self.counter, "stage1:combine")
        return lambda: _take(finish(), _inverse(self.perm1))


def _take(x: Tensor, rows: np.ndarray) -> Tensor:
    """x[rows] (a differentiable gather; the rows are a host permutation)."""
    return take_rows(x, Tensor(np.asarray(rows, dtype=np.int64)))


def _inverse(p: np.ndarray) -> np.ndarray:
    inv = np.empty_like(p)
    inv[p] = np.arange(len(p))
    return inv
