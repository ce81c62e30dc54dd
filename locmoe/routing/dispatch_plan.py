"""The dispatch plan: which token copy goes to which expert on which rank, what stays on the rank, stays
in the node or crosses nodes, what is dropped, and the permutations that move copies there and back.

Copies are numbered in token order, then choice order; tokens are numbered rank by rank (rank 0's T tokens
first), so one rank's copies are contiguous. Orders used by every backend:
- send order of a rank: its kept copies sorted by (destination rank, expert slot there, copy id);
- expert order of a rank: the kept copies it receives, sorted by (expert slot, source rank, copy id),
  which is the order its grouped GEMM processes them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from locmoe.parallel.topology import ExpertPlacement
from locmoe.routing.admission import admit


@dataclass(kw_only=True)
class DispatchPlan:
    placement: ExpertPlacement
    token: np.ndarray  # [C] global token id of each copy
    expert: np.ndarray  # [C]
    weight: np.ndarray  # [C] combine weight
    prob: np.ndarray  # [C] routing probability (admission priority)
    src_rank: np.ndarray  # [C]
    dst_rank: np.ndarray  # [C]
    locality: np.ndarray  # [C] 0 on-rank, 1 in-node, 2 cross-node
    kept: np.ndarray  # [C] bool
    capacity: np.ndarray  # [E]
    num_tokens: int  # T over the whole EP group
    expert_slot: np.ndarray = field(init=False)  # [C] slot of the copy's expert on its rank

    def __post_init__(self):
        self.expert_slot = self.placement.local_slot()[self.expert]

    @property
    def world_size(self) -> int:
        return self.placement.topology.world_size

    # --------------------------------------------------------------- counts
    def expert_load(self) -> np.ndarray:
        """[E] copies routed to each expert before capacity."""
        return np.bincount(self.expert, minlength=self.placement.num_experts)

    def admitted(self) -> np.ndarray:
        """[E] copies each expert processes."""
        return np.bincount(self.expert[self.kept], minlength=self.placement.num_experts)

    def dropped(self) -> int:
        return int((~self.kept).sum())

    def send_counts(self) -> np.ndarray:
        """[W, W] kept copies from source rank (row) to destination rank (column)."""
        W = self.world_size
        flat = self.src_rank[self.kept] * W + self.dst_rank[self.kept]
        return np.bincount(flat, minlength=W * W).reshape(W, W)

    def recv_counts(self) -> np.ndarray:
        """[W dst, W src, E/W slot] kept copies from each source for each local expert of each destination."""
        W, El = self.world_size, self.placement.experts_per_rank
        k = self.kept
        flat = (self.dst_rank[k] * W + self.src_rank[k]) * El + self.expert_slot[k]
        return np.bincount(flat, minlength=W * W * El).reshape(W, W, El)

    # --------------------------------------------------------------- permutations
    def send_order(self, rank: int) -> np.ndarray:
        """Global copy ids of ``rank``'s kept copies in the order its send buffer holds them."""
        ids = np.flatnonzero(self.kept & (self.src_rank == rank))
        return ids[np.lexsort((ids, self.expert_slot[ids], self.dst_rank[ids]))]

    def expert_order(self, rank: int) -> np.ndarray:
        """Global copy ids that ``rank``'s experts process, in grouped-GEMM order."""
        ids = np.flatnonzero(self.kept & (self.dst_rank == rank))
        return ids[np.lexsort((ids, self.src_rank[ids], self.expert_slot[ids]))]

    def combine_order(self, rank: int) -> np.ndarray:
        """Inverse of the send permutation: position in the send buffer of each kept copy of ``rank``,
        listed in copy-id order (so ``send_order(rank)[combine_order(rank)]`` is sorted)."""
        return np.argsort(self.send_order(rank), kind="stable")

    # --------------------------------------------------------------- traffic
    def traffic(self, bytes_per_copy: int, scheme: str = "flat", direction: str = "dispatch") -> dict:
        """Bytes each rank sends during one dispatch, or during the combine that brings the outputs back.

        flat: one all-to-all over the EP group. hierarchical: stage 1 inside the node to the rank with the
        destination's local index (the relay), stage 2 across nodes among ranks of equal local index, carrying
        only the copies whose expert lives on another node; the combine is the mirror (stage 2 reversed, then
        stage 1 reversed).
        Returns:
            {"intra_node": [W], "cross_node": [W]} bytes sent by each rank (self-sends excluded).
        """
        if scheme not in ("flat", "hierarchical") or direction not in ("dispatch", "combine"):
            raise ValueError(
                f"traffic: scheme must be 'flat' or 'hierarchical' (got {scheme!r}) and direction "
                f"'dispatch' or 'combine' (got {direction!r})"
            )
        topo, W = self.placement.topology, self.world_size
        src, dst = self.src_rank[self.kept], self.dst_rank[self.kept]
        intra, cross = np.zeros(W, dtype=np.int64), np.zeros(W, dtype=np.int64)
        src_node, dst_node = topo.node_of(src), topo.node_of(dst)
        crossing = src_node != dst_node
        if scheme == "flat":
            sender = src if direction == "dispatch" else dst
            np.add.at(intra, sender[(src != dst) & ~crossing], bytes_per_copy)
            np.add.at(cross, sender[crossing], bytes_per_copy)
            return {"intra_node": intra, "cross_node": cross}
        relay = np.asarray(src_node * topo.devices_per_node + topo.local_index(dst))  # [C] ranks
        hop1 = relay != src
        if direction == "dispatch":
            np.add.at(intra, src[hop1], bytes_per_copy)
            np.add.at(cross, relay[crossing], bytes_per_copy)
        else:
            np.add.at(cross, dst[crossing], bytes_per_copy)
            np.add.at(intra, relay[hop1], bytes_per_copy)
        return {"intra_node": intra, "cross_node": cross}

    def locality_fractions(self) -> dict:
        """Share of kept copies that stay on the rank, stay in the node, or cross nodes."""
        loc = self.locality[self.kept]
        n = max(len(loc), 1)
        return {name: float((loc == c).sum() / n) for c, name in enumerate(("on_rank", "in_node", "cross_node"))}


def build_dispatch_plan(
    token: np.ndarray,
    expert: np.ndarray,
    weight: np.ndarray,
    prob: np.ndarray,
    token_rank: np.ndarray,
    placement: ExpertPlacement,
    capacity: np.ndarray,
    num_tokens: int,
) -> DispatchPlan:
    """Admit copies under ``capacity`` in on-rank → in-node → cross-node priority and lay out the plan.

    Args:
        token, expert, weight, prob: [C] the router's copies, in copy-id order.
        token_rank: [T] source rank of each token.
        capacity: [E] copies each expert admits (``num_tokens * k`` or more = dropless).
    """
    src = token_rank[token]
    dst = placement.rank_array[expert]
    locality = placement.topology.locality_class(src, dst)
    kept = admit(expert, prob, locality, capacity)
    return DispatchPlan(
        placement=placement,
        token=token,
        expert=expert,
        weight=weight,
        prob=prob,
        src_rank=src,
        dst_rank=dst,
        locality=locality,
        kept=kept,
        capacity=np.asarray(capacity, dtype=np.int64),
        num_tokens=num_tokens,
    )


def chunk_permutation(counts: np.ndarray) -> np.ndarray:
    """Permutation turning a buffer laid out [a][b] (chunk sizes ``counts[a, b]``) into [b][a].

    Used on receipt: copies arrive source-major/expert-minor and the grouped GEMM wants expert-major.
    ``buffer[chunk_permutation(counts)]`` is the reordered buffer.
    """
    A, B = counts.shape
    starts = np.concatenate([[0], np.cumsum(counts.reshape(-1))[:-1]]).reshape(A, B)
    pieces = [np.arange(starts[a, b], starts[a, b] + counts[a, b]) for b in range(B) for a in range(A)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
