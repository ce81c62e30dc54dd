"""The layout stage of the dispatcher's plan: this rank's copies in send order, and how each chunk moves.

Mirrors ``locmoe.routing.dispatch_plan``: a rank's send buffer holds its kept copies by (destination rank,
expert slot, copy id); the experts process theirs by (slot, source rank, copy id).

Without an exchange (a group of one: one device, or one process standing in for W ranks) every buffer keeps
its fixed size C, the dropped copies last, and nothing reaches the host. With one, the split sizes must: one
small all-gather of counts is read on the host per call (``_counts``). ``dispatch_shape: static`` with an
exchange sends fixed-size blocks instead (``static_exchange``): one all-gather of counts, no host read.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from locmoe.config.schema import MoEConfig
from locmoe.moe.exchange import exchange_for, inverse
from locmoe.moe.records import ChunkDispatch, CopyLayout, RouterOutput, StaticSlots, Tensor
from locmoe.moe.static_exchange import StaticExchange, static_indices
from locmoe.moe.surface import MoEOps
from locmoe.parallel.context import ExpertParallel
from locmoe.parallel.traffic import TrafficCounter
from locmoe.routing.capacity import factor_capacity
from locmoe.routing.dispatch_plan import chunk_permutation


class SendLayout:
    def __init__(self, ops: MoEOps, ep: ExpertParallel, moe: MoEConfig, counter: TrafficCounter):
        self.ops, self.ep, self.moe, self.counter = ops, ep, moe, counter
        self.num_experts, self.num_ranks = moe.num_experts, ep.topology.world_size
        self.experts_per_rank = len(ep.local_experts)

    def of(
        self,
        out: RouterOutput,
        token_rank: Tensor,
        kept: Optional[Tensor],
        capacity: Tensor,
        tables: tuple[Tensor, Tensor],
        num_tokens: int,
        chunks: int,
    ) -> CopyLayout:
        """The layout of this rank's copies (``kept`` [C] its admitted ones, None: all); ``tables`` the expert ->
        rank and expert -> slot tables on the device; ``capacity`` [E] (the static buffer's size)."""
        group_tokens = num_tokens * self.ep.group.size
        static = self.moe.dispatch_shape == "static"
        if self.ep.group.size == 1:
            layout = self.without_exchange(out, token_rank, kept)
            if static:
                self.attach_slots(layout, out, self.static_size(capacity, group_tokens))
            return layout
        if static:
            return self.static_exchange(out, kept, *tables, self.static_size(capacity, group_tokens))
        return self.with_exchange(out, kept, *tables, num_tokens, chunks)

    def without_exchange(self, out: RouterOutput, token_rank: Tensor, kept: Optional[Tensor]) -> CopyLayout:
        """This process holds every expert: all C copies in expert order (each expert's by source rank, then
        copy id), dropped copies last. The buffer keeps its fixed size C, so no count reaches the host; the
        experts give dropped rows zeros (``ChunkDispatch.dropped_tail``) and the combine weighs them 0. Chunks
        only overlap communication, so there is one here."""
        assert out.expert is not None and out.token is not None, "copies are filled in by choose_over_group"
        ops, E, W, C = self.ops, self.num_experts, self.num_ranks, out.expert.shape[0]
        key = out.expert * W + ops.take(token_rank, out.token)
        if kept is not None:
            key = ops.where(kept, key, ops.full_like(key, E * W))
        order = ops.argsort_stable(key)
        counts = ops.counts_of(out.expert, E, kept)
        plan = ChunkDispatch(order, counts, None, None, None, dropped_tail=kept is not None)
        return CopyLayout(order, [0, C], kept, [plan], self.positions(out, order, C))

    def static_size(self, capacity: Tensor, num_tokens: int) -> int:
        """Slots per expert of the static buffer: the factor capacity, or the bound's largest capacity rounded up
        to a multiple of ``moe.capacity.bucket`` (one host read per call; a few distinct shapes over a run)."""
        c, k, E = self.moe.capacity, self.moe.router.top_k, self.num_experts
        if c.mode == "factor":
            assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
            return factor_capacity(c.factor, k, num_tokens, E)
        largest = int(self.ops.to_host(capacity).max())
        return -(-largest // c.bucket) * c.bucket

    def attach_slots(self, layout: CopyLayout, out: RouterOutput, size: int) -> None:
        """The static view of the expert-major rows (kept copies of expert e at rows start_e .. start_e+n_e-1,
        n_e <= capacity <= size): slot e·size + p holds row start_e + p."""
        ops, d = self.ops, layout.chunks[0]
        counts, rows = d.expert_counts, layout.order.shape[0]
        start = ops.cumsum(counts) - counts
        slot = ops.arange(counts.shape[0] * size, like=counts)
        e, p = slot // size, slot % size
        row_of_slot = ops.where(p < ops.take(counts, e), ops.take(start, e) + p, ops.full_like(slot, rows))
        row = ops.arange(rows, like=counts)
        expert = ops.take(out.expert, layout.order)
        within = row < ops.sum(counts)  # the dropped copies come last and return nothing
        safe = ops.where(within, expert, ops.zeros_like(expert))
        slot_of_row = ops.where(
            within, safe * size + row - ops.take(start, safe), ops.full_like(row, counts.shape[0] * size)
        )
        d.static_size, d.slots = size, StaticSlots(row_of_slot, slot_of_row)

    def static_exchange(
        self, out: RouterOutput, kept: Optional[Tensor], rank_of: Tensor, slot_of: Tensor, size: int
    ) -> CopyLayout:
        """Fixed-size blocks (``static_exchange``): all C copies in send order, kept first; one chunk."""
        assert out.expert is not None, "copies are filled in by choose_over_group"
        ops, W, El, C = self.ops, self.num_ranks, self.experts_per_rank, out.expert.shape[0]
        key = ops.take(rank_of, out.expert) * El + ops.take(slot_of, out.expert)
        counts = ops.counts_of(key, W * El, kept)
        if kept is not None:
            key = ops.where(kept, key, ops.full_like(key, W * El))
        order = ops.argsort_stable(key)
        me = self.ep.rank
        received = ops.all_gather_rows(counts[None], self.ep.group)[:, me * El : (me + 1) * El]  # [W src, El]
        indices = static_indices(ops, ops.take(key, order), counts, received, size, like=order)
        S = np.full((W, W), El * size, dtype=np.int64)  # the same blocks every step
        exchange = StaticExchange(ops, exchange_for(ops, S, self.ep, self.counter), *indices)
        plan = ChunkDispatch(order, None, None, None, exchange, static_size=size)
        return CopyLayout(order, [0, C], kept, [plan], self.positions(out, order, C))

    def with_exchange(
        self, out: RouterOutput, kept: Optional[Tensor], rank_of: Tensor, slot_of: Tensor, num_tokens: int, chunks: int
    ) -> CopyLayout:
        """Kept copies only, chunk by chunk, each chunk by (destination rank, slot); the split sizes from one
        all-gather of counts read on the host."""
        assert out.token is not None, "copies are filled in by choose_over_group"
        ops, W, El = self.ops, self.num_ranks, self.experts_per_rank
        dst, slot = ops.take(rank_of, out.expert), ops.take(slot_of, out.expert)
        chunk_of = out.token * chunks // num_tokens
        key = (chunk_of * W + dst) * El + slot
        counts = self._counts(key, kept, chunks)  # host numpy: the one sync
        sizes = counts[self.ep.rank].sum(axis=(1, 2)).tolist()
        # One stable sort for every chunk, dropped copies last; the chunk sizes come from the host counts.
        if kept is not None:
            key = ops.where(kept, key, ops.full_like(key, chunks * W * El))
        order = ops.argsort_stable(key)
        bounds = np.cumsum([0, *sizes]).tolist()
        plans = [self._chunk(c, order[bounds[c] : bounds[c + 1]], counts) for c in range(chunks)]
        return CopyLayout(order[: bounds[-1]], bounds, kept, plans, self.positions(out, order, bounds[-1]), counts)

    def positions(self, out: RouterOutput, order: Tensor, num_kept: int) -> Optional[Tensor]:
        """[T, k] row of each copy in the buffer holding ``order[:num_kept]`` (token-choice routers), else
        None; a copy outside it has some row the combine weighs 0."""
        if out.choices is None:
            return None
        T, k = out.choices.shape
        return self.ops.copy_positions(order, num_kept, T * k).reshape(T, k)

    def _counts(self, key: Tensor, kept: Optional[Tensor], chunks: int) -> np.ndarray:
        """[W src, chunks, W dst, E_local] kept copies, from every rank (one small all-gather; the host reads
        it once, which is the only sync the split sizes need)."""
        ops, W, El = self.ops, self.num_ranks, self.experts_per_rank
        mine = ops.counts_of(key, chunks * W * El, kept)
        gathered = ops.to_host(ops.all_gather_rows(mine[None], self.ep.group))
        return gathered.reshape(-1, chunks, W, El)

    def _chunk(self, c: int, order: Tensor, counts: np.ndarray) -> ChunkDispatch:
        ops = self.ops
        S = counts[:, c].sum(axis=-1)  # [W src, W dst]
        recv = counts[:, c, self.ep.rank, :]  # [W src, E_local]
        perm = chunk_permutation(recv)
        return ChunkDispatch(
            order,
            ops.index_tensor(recv.sum(axis=0), like=order),
            ops.index_tensor(perm, like=order),
            ops.index_tensor(inverse(perm), like=order),
            exchange_for(ops, S, self.ep, self.counter),
        )
