"""Flat and hierarchical (intra-node first, then inter-node) dispatch/combine of token copies.

Both take the send buffer of this rank, laid out destination-major (rank 0's copies first), and return a
``finish`` callable that yields the receive buffer laid out source-major — the same layout for both
schemes, so results are identical.
``S`` is the global [W, W] matrix of kept copies from each source rank (row) to each destination (column),
known on every rank from the gathered routing decisions.

Hierarchical: stage 1 inside the node sends each copy to the rank with its destination's local index;
the relay reorders [source in node][destination node] → [destination node][source in node]; stage 2
among ranks of equal local index carries only the copies bound for other nodes. Combine is the mirror:
stage 2 reversed, then stage 1 reversed. With one node, or one rank per node, the dispatcher uses the
flat scheme, which is then the same traffic. The last stage is launched asynchronously so that expert
compute can overlap it.
"""
from __future__ import annotations

import numpy as np
import torch

from backends.torch.collectives import Group, TrafficCounter, all_to_all, all_to_all_start
from locmoe.routing.hierarchical_splits import HierarchicalSplits
from locmoe.topology import Topology


class FlatAllToAll:
    def __init__(self, S: np.ndarray, rank: int, group: Group, counter: TrafficCounter | None):
        self.send, self.recv = S[rank].tolist(), S[:, rank].tolist()
        self.group, self.counter = group, counter

    def dispatch(self, x: torch.Tensor):
        return all_to_all_start(x, self.send, self.recv, self.group, self.counter, "flat")

    def combine(self, y: torch.Tensor):
        return all_to_all_start(y, self.recv, self.send, self.group, self.counter, "flat:combine")


class HierarchicalAllToAll:
    def __init__(self, S: np.ndarray, rank: int, topology: Topology, intra: Group, inter: Group,
                 counter: TrafficCounter | None):
        h = HierarchicalSplits.of(S, rank, topology)
        self.perm1, self.perm2 = _perm(h.perm1), _perm(h.perm2)
        self.send1, self.recv1, self.send2, self.recv2 = h.send1, h.recv1, h.send2, h.recv2
        self.intra, self.inter, self.counter = intra, inter, counter

    def dispatch(self, x: torch.Tensor):
        dev = x.device
        h = all_to_all(x[self.perm1.to(dev)], self.send1, self.recv1, self.intra, self.counter, "stage1")
        return all_to_all_start(h[self.perm2.to(dev)], self.send2, self.recv2, self.inter, self.counter, "stage2")

    def combine(self, y: torch.Tensor):
        dev = y.device
        h = all_to_all(y, self.recv2, self.send2, self.inter, self.counter, "stage2:combine")
        h = h[_inverse(self.perm2).to(dev)]
        finish = all_to_all_start(h, self.recv1, self.send1, self.intra, self.counter, "stage1:combine")
        return lambda: finish()[_inverse(self.perm1).to(dev)]


def _perm(p: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(p, dtype=np.int64))


def _inverse(p: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(p)
    inv[p] = torch.arange(p.numel())
    return inv
