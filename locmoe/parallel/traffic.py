"""Bytes a rank sends to other ranks of its node and to other nodes, counted on every all-to-all.

Framework-free: both backends' collectives add to it, and tests compare it to the numpy dispatch plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class TrafficCounter:
    """Bytes this rank sent, split by link, accumulated over calls (reset each step by the caller)."""

    intra_node: int = 0
    cross_node: int = 0
    calls: int = 0
    by_stage: dict = field(default_factory=dict)

    def add(
        self,
        nbytes_to_peers: Sequence[int],
        peer_nodes: Sequence[int],
        my_node: int,
        peer_ranks: Sequence[int],
        my_rank: int,
        stage: str,
    ) -> None:
        intra = sum(b for b, n, r in zip(nbytes_to_peers, peer_nodes, peer_ranks) if n == my_node and r != my_rank)
        cross = sum(b for b, n in zip(nbytes_to_peers, peer_nodes) if n != my_node)
        self.intra_node += intra
        self.cross_node += cross
        self.calls += 1
        s = self.by_stage.setdefault(stage, [0, 0])
        s[0] += intra
        s[1] += cross

    def add_rows(self, rows_to_peers: Sequence[int], row_bytes: int, group, stage: str) -> None:
        """``add`` for one all-to-all of a backend's ``Group`` (members' ``ranks``, ``nodes``, ``my_index``)."""
        me, nbytes = group.my_index, [r * row_bytes for r in rows_to_peers]
        self.add(nbytes, group.nodes, group.nodes[me], group.ranks, group.ranks[me], stage)

    def reset(self) -> None:
        self.intra_node = self.cross_node = self.calls = 0
        self.by_stage = {}
