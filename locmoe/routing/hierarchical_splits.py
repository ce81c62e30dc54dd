"""The two stages of the hierarchical all-to-all, for one rank, from the global send matrix.

``S`` [W, W] counts the copies each source rank (row) sends to each destination rank (column); ranks are
node-major (rank = node · G + local index). Stage 1 runs inside the node: each copy goes to the rank of its
node that has its destination's local index. That relay rank then regroups what it received and stage 2
sends, among ranks of equal local index, only the copies bound for other nodes. Both backends' schemes run
these splits; the numpy dispatch plan predicts the same traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from locmoe.parallel.topology import Topology
from locmoe.routing.dispatch_plan import chunk_permutation


@dataclass(frozen=True)
class HierarchicalSplits:
    perm1: np.ndarray  # my send buffer [dst node][dst local] -> [dst local][dst node]
    send1: list  # stage 1: rows to each local index of my node
    recv1: list  # stage 1: rows from each local index, all bound for my local index
    perm2: np.ndarray  # relay: received [src local][dst node] -> [dst node][src local]
    send2: list  # stage 2: rows to each node (its rank of my local index)
    recv2: list  # stage 2: rows from each node, relayed by its rank of my local index

    @staticmethod
    def of(S: np.ndarray, rank: int, topology: Topology) -> "HierarchicalSplits":
        N, G = topology.num_nodes, topology.devices_per_node
        n, g = divmod(rank, G)
        S4 = S.reshape(N, G, N, G)  # [src node, src local, dst node, dst local]
        mine = S4[n, g]  # [dst node, dst local]
        relayed = S4[n, :, :, g]  # [src local, dst node], what I relay
        return HierarchicalSplits(
            perm1=chunk_permutation(mine),
            send1=mine.sum(axis=0).tolist(),
            recv1=relayed.sum(axis=1).tolist(),
            perm2=chunk_permutation(relayed),
            send2=relayed.sum(axis=0).tolist(),
            recv2=S4[:, :, n, g].sum(axis=1).tolist(),
        )
