"""Token dispatcher: admission over the whole EP group, then permute → all-to-all → expert-major order for
the experts, and the mirror image for the combine.

Mirrors ``locmoe.routing.dispatch_plan``: a rank's send buffer holds its kept copies by (destination rank,
expert slot, copy id); the experts process theirs by (slot, source rank, copy id). Admission is global, so
every rank all-gathers the compact routing decisions (expert, probability, angle, source rank per copy) of
the group — except in dropless mode and for expert choice, where nothing is dropped and only counts are
exchanged.

Without an exchange (a group of one: one device, or one process standing in for W ranks) every buffer keeps
its fixed size C, the dropped copies last, and nothing reaches the host. With one, the split sizes must: one
small all-gather of counts is read on the host per call (``_counts``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from locmoe.config.schema import MoEConfig
from locmoe.moe.capacity import CapacityPlanner
from locmoe.moe.exchange import exchange_for, inverse
from locmoe.moe.records import ChunkDispatch, CopyLayout, GroupStats, RouterOutput, StaticSlots, Tensor
from locmoe.moe.routing import expert_choice_copies
from locmoe.moe.static_exchange import StaticExchange, static_indices
from locmoe.moe.surface import MoEOps
from locmoe.parallel_context import ExpertParallel
from locmoe.routing.capacity import factor_capacity
from locmoe.routing.dispatch_plan import chunk_permutation
from locmoe.traffic import TrafficCounter


class TokenDispatcher:
    def __init__(
        self,
        ops: MoEOps,
        ep: ExpertParallel,
        moe: MoEConfig,
        capacity: CapacityPlanner,
        counter: Optional[TrafficCounter] = None,
    ):
        self.ops, self.ep, self.moe, self.capacity = ops, ep, moe, capacity
        self.counter = counter if counter is not None else TrafficCounter()
        self.num_experts, self.num_ranks = moe.num_experts, ep.topology.world_size
        self.experts_per_rank = len(ep.local_experts)
        self.expert_rank = ep.placement.rank_array  # expert -> EP rank
        self.expert_slot = ep.placement.local_slot()  # expert -> its slot on that rank
        self.tables = None  # the two on the device, copied once

    # ------------------------------------------------------------------ planning
    def plan(
        self, out: RouterOutput, token_rank: Tensor, num_tokens: int, chunks: int, training: bool
    ) -> tuple[RouterOutput, CopyLayout, GroupStats, Tensor]:
        """Decide which copies are kept and how each chunk of this rank's tokens moves.

        Returns the routing (expert choice: with its copies filled in), the layout of this rank's copies, the
        group's statistics, and ``kept`` [C] for its copies.
        """
        ops, group = self.ops, self.ep.group
        if out.choices is None and out.token is None:  # expert choice picks over the group
            gathered = ops.all_gather_rows(ops.detach(out.probs), group)
            out = expert_choice_copies(
                ops, out, gathered, group.my_index, self.moe.capacity.factor, self.moe.router.top_k
            )
        rank_of, slot_of = self._tables(out.expert)
        src, g_expert, g_prob, g_angle, mine = self._group_view(out, token_rank)
        capacity, bound = self.capacity.plan(g_expert, g_angle, out.angles, num_tokens * group.size, group, training)
        locality = self._locality(src, ops.take(rank_of, g_expert))
        kept = ops.admit(g_expert, g_prob, locality, capacity) if self.capacity.drops else None
        stats = self._stats(g_expert, kept, locality, capacity, bound)
        kept_mine = None if kept is None else kept[mine]
        if group.size == 1:
            layout = self._layout_without_exchange(out, token_rank, kept_mine)
            if self.moe.dispatch_shape == "static":
                self._attach_slots(layout, out, self._static_size(capacity, num_tokens * group.size))
        elif self.moe.dispatch_shape == "static":
            size = self._static_size(capacity, num_tokens * group.size)
            layout = self._layout_static_exchange(out, kept_mine, rank_of, slot_of, size)
        else:
            layout = self._layout_with_exchange(out, kept_mine, rank_of, slot_of, num_tokens, chunks)
        if kept_mine is None:
            kept_mine = ops.ones_like(out.expert, "bool")
        return out, layout, stats, kept_mine

    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The expert -> rank and expert -> slot tables on the layer's device (a copy from pageable host memory
        waits for the device queue: made once)."""
        if self.tables is None or not self.ops.same_device(self.tables[0], like):
            self.tables = (
                self.ops.index_tensor(self.expert_rank, like=like),
                self.ops.index_tensor(self.expert_slot, like=like),
            )
        return self.tables

    def _layout_without_exchange(self, out: RouterOutput, token_rank: Tensor, kept: Optional[Tensor]) -> CopyLayout:
        """This process holds every expert: all C copies in expert order (each expert's by source rank, then
        copy id), dropped copies last. The buffer keeps its fixed size C, so no count reaches the host; the
        experts give dropped rows zeros (``ChunkDispatch.dropped_tail``) and the combine weighs them 0. Chunks
        only overlap communication, so there is one here."""
        ops, E, W, C = self.ops, self.num_experts, self.num_ranks, out.expert.shape[0]
        key = out.expert * W + ops.take(token_rank, out.token)
        if kept is not None:
            key = ops.where(kept, key, ops.full_like(key, E * W))
        order = ops.argsort_stable(key)
        counts = ops.counts_of(out.expert, E, kept)
        plan = ChunkDispatch(order, counts, None, None, None, dropped_tail=kept is not None)
        return CopyLayout(order, [0, C], kept, [plan], self._positions(out, order, C))

    def _static_size(self, capacity: Tensor, num_tokens: int) -> int:
        """Slots per expert of the static buffer: the factor capacity, or the bound's largest capacity rounded up
        to a multiple of ``moe.capacity.bucket`` (one host read per call; a few distinct shapes over a run)."""
        c, k, E = self.moe.capacity, self.moe.router.top_k, self.num_experts
        if c.mode == "factor":
            return factor_capacity(c.factor, k, num_tokens, E)
        largest = int(self.ops.to_host(capacity).max())
        return -(-largest // c.bucket) * c.bucket

    def _attach_slots(self, layout: CopyLayout, out: RouterOutput, size: int) -> None:
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

    def _layout_static_exchange(
        self, out: RouterOutput, kept: Optional[Tensor], rank_of: Tensor, slot_of: Tensor, size: int
    ) -> CopyLayout:
        """Fixed-size blocks (``static_exchange``): all C copies in send order, kept first; one chunk."""
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
        return CopyLayout(order, [0, C], kept, [plan], self._positions(out, order, C))

    def _layout_with_exchange(
        self, out: RouterOutput, kept: Optional[Tensor], rank_of: Tensor, slot_of: Tensor, num_tokens: int, chunks: int
    ) -> CopyLayout:
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
        return CopyLayout(order[: bounds[-1]], bounds, kept, plans, self._positions(out, order, bounds[-1]), counts)

    def _positions(self, out: RouterOutput, order: Tensor, num_kept: int) -> Optional[Tensor]:
        """[T, k] row of each copy in the buffer holding ``order[:num_kept]`` (token-choice routers), else
        None; a copy outside it has some row the combine weighs 0."""
        if out.choices is None:
            return None
        T, k = out.choices.shape
        return self.ops.copy_positions(order, num_kept, T * k).reshape(T, k)

    def _group_view(self, out: RouterOutput, token_rank: Tensor):
        """(source rank, expert, prob, angle) of every copy of the group, and which of them are mine."""
        ops, group = self.ops, self.ep.group
        C = out.expert.shape[0]
        if out.angles is not None:
            angle = ops.take(out.angles.reshape(-1), out.token * self.num_experts + out.expert)
        else:
            angle = ops.zeros((C,), "float64", like=out.prob)
        src = ops.take(token_rank, out.token)
        if group.size == 1 or not self.capacity.drops:
            # nothing to gather: a group of one, or nothing is dropped and only counts matter (see _stats)
            return src, out.expert, out.prob, angle, slice(None)
        columns = [ops.cast(t, "float64") for t in (out.expert, out.prob, angle, src)]
        g = ops.all_gather_rows(ops.stack(columns, axis=1), group)
        me = group.my_index
        return (
            ops.cast(g[:, 3], "int64"),
            ops.cast(g[:, 0], "int64"),
            ops.cast_like(g[:, 1], out.prob),
            g[:, 2],
            slice(me * C, (me + 1) * C),
        )

    def _locality(self, src: Tensor, dst: Tensor) -> Tensor:
        """0 on the copy's own rank, 1 in its node, 2 across nodes."""
        ops, G = self.ops, self.ep.topology.devices_per_node
        same_node = src // G == dst // G
        return ops.where(
            src == dst, ops.zeros_like(src), ops.where(same_node, ops.ones_like(src), ops.full_like(src, 2))
        )

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

    def _stats(self, g_expert: Tensor, kept: Optional[Tensor], locality: Tensor, capacity: Tensor, bound) -> GroupStats:
        """Group-wide counts on the device (``kept`` None: every copy is kept)."""
        ops, E, group = self.ops, self.num_experts, self.ep.group
        load = ops.counts_of(g_expert, E)
        admitted = load if kept is None else ops.counts_of(g_expert, E, kept)
        loc = ops.counts_of(locality, 3, kept)
        if group.size > 1 and not self.capacity.drops:
            # without admission each rank saw only its own copies (see _group_view)
            load = ops.all_reduce(load, group)
            admitted, loc = load, ops.all_reduce(loc, group)
        return GroupStats(load, admitted, capacity, bound, loc, ops.sum(load))

    # ------------------------------------------------------------------ moving tokens
    def permute(self, x: Tensor, out: RouterOutput, layout: CopyLayout) -> Tensor:
        """This rank's send buffer: [M, d] rows of its copies, chunk by chunk in send order."""
        row_token = self.ops.take(out.token, layout.order)
        if out.choices is None:  # expert choice: tokens have any number of copies
            return self.ops.take_rows(x, row_token)
        kept = None if layout.kept is None else layout.kept.reshape(layout.pos.shape)
        return self.ops.permute_copies(x, row_token, layout.pos, kept)

    def dispatch(self, rows: Tensor, d: ChunkDispatch):
        """Launch the movement of one chunk's send rows; returns ``finish`` → rows for the local experts,
        expert-major."""
        if d.exchange is None:
            if d.slots is not None:
                rows = self.ops.take_rows(self.ops.pad_row(rows), d.slots.row_of_slot)
            return lambda: rows
        finish = d.exchange.dispatch(rows)
        if d.recv_perm is None:  # static blocks arrive in their slots already
            return finish
        return lambda: self.ops.take_rows(finish(), d.recv_perm)

    def combine(self, y: Tensor, d: ChunkDispatch):
        """Launch the return of one chunk's expert outputs; returns ``finish`` → rows in send order."""
        if d.exchange is None:
            if d.slots is not None:
                y = self.ops.take_rows(self.ops.pad_row(y), d.slots.slot_of_row)
            return lambda: y
        return d.exchange.combine(y if d.send_perm is None else self.ops.take_rows(y, d.send_perm))

    def unpermute(self, rows: Tensor, out: RouterOutput, layout: CopyLayout, num_tokens: int) -> Tensor:
        """Weighted sum of each token's returned copies: rows [M, d] in send order → [T, d]."""
        ops = self.ops
        row_token = ops.take(out.token, layout.order)
        if out.choices is None:
            weight = ops.take(out.weight, layout.order)
            return ops.scatter_add_rows(rows, weight, row_token, num_tokens)
        T, k = out.choices.shape
        kept = None if layout.kept is None else layout.kept.reshape(T, k)
        return ops.combine_copies(rows, out.weight.reshape(T, k), layout.pos, kept, row_token, layout.order)
