"""Flat and hierarchical (intra-node first, then inter-node) dispatch/combine of token copies.

Both take the send buffer of this rank, laid out destination-major (rank 0's copies first), and return a
``finish`` callable that yields the receive buffer laid out source-major — the same layout for both schemes,
so results are identical. ``S`` is the group's [W, W] matrix of kept copies from each source rank (row) to
each destination (column), known on every rank from the gathered counts.

Hierarchical: stage 1 inside the node sends each copy to the rank with its destination's local index; the
relay reorders [source in node][destination node] → [destination node][source in node]; stage 2 among ranks
of equal local index carries only the copies bound for other nodes (``locmoe.routing.hierarchical_splits``).
Combine is the mirror: stage 2 reversed, then stage 1 reversed. With one node, or one rank per node, the
dispatcher uses the flat scheme, which is then the same traffic. The last stage is launched asynchronously so
that expert compute can overlap it (where the backend's collectives are asynchronous).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from locmoe.moe.records import Tensor
from locmoe.moe.surface import MoEOps
from locmoe.parallel.topology import Topology
from locmoe.parallel.traffic import TrafficCounter
from locmoe.routing.hierarchical_splits import HierarchicalSplits


class FlatAllToAll:
    def __init__(self, ops: MoEOps, S: np.ndarray, rank: int, group, counter: Optional[TrafficCounter]):
        self.ops, self.group, self.counter = ops, group, counter
        self.send, self.recv = S[rank].tolist(), S[:, rank].tolist()

    def dispatch(self, x: Tensor) -> Callable[[], Tensor]:
        return self.ops.all_to_all_start(x, self.send, self.recv, self.group, self.counter, "flat")

    def combine(self, y: Tensor) -> Callable[[], Tensor]:
        return self.ops.all_to_all_start(y, self.recv, self.send, self.group, self.counter, "flat:combine")


class HierarchicalAllToAll:
    def __init__(
        self, ops: MoEOps, S: np.ndarray, rank: int, topology: Topology, intra, inter, counter: Optional[TrafficCounter]
    ):
        h = HierarchicalSplits.of(S, rank, topology)
        self.ops, self.intra, self.inter, self.counter = ops, intra, inter, counter
        self.perm1, self.perm2 = h.perm1, h.perm2
        self.send1, self.recv1, self.send2, self.recv2 = h.send1, h.recv1, h.send2, h.recv2

    def dispatch(self, x: Tensor) -> Callable[[], Tensor]:
        ops = self.ops
        h = ops.all_to_all(self._take(x, self.perm1), self.send1, self.recv1, self.intra, self.counter, "stage1")
        return ops.all_to_all_start(
            self._take(h, self.perm2), self.send2, self.recv2, self.inter, self.counter, "stage2"
        )

    def combine(self, y: Tensor) -> Callable[[], Tensor]:
        ops = self.ops
        h = ops.all_to_all(y, self.recv2, self.send2, self.inter, self.counter, "stage2:combine")
        h = self._take(h, inverse(self.perm2))
        finish = ops.all_to_all_start(h, self.recv1, self.send1, self.intra, self.counter, "stage1:combine")
        return lambda: self._take(finish(), inverse(self.perm1))

    def _take(self, x: Tensor, rows: np.ndarray) -> Tensor:
        """x[rows]: a differentiable gather by a host permutation."""
        return self.ops.take_rows(x, self.ops.index_tensor(rows, like=x))


def exchange_for(ops: MoEOps, S: np.ndarray, ep, counter: Optional[TrafficCounter]):
    """The scheme ``parallel.dispatch`` asks for; flat where the hierarchy has one level."""
    topo = ep.topology
    if ep.scheme == "hierarchical" and topo.num_nodes > 1 and topo.devices_per_node > 1:
        return HierarchicalAllToAll(ops, S, ep.rank, topo, ep.intra, ep.inter, counter)
    return FlatAllToAll(ops, S, ep.rank, ep.group, counter)


def inverse(p: np.ndarray) -> np.ndarray:
    """The inverse of a permutation."""
    inv = np.empty_like(p)
    inv[p] = np.arange(len(p))
    return inv
