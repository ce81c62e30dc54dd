"""Token dispatcher: the plan of one layer call in named stages — capacity, admission (over the whole EP group),
statistics, layout — then permute → all-to-all → expert-major order for the experts, and the mirror image for
the combine.

Admission is global, so every rank all-gathers the compact routing decisions (expert, probability, angle,
source rank per copy) of the group — except in dropless mode and for expert choice, where nothing is dropped
and only counts are exchanged. The layout stage is ``send_layout.SendLayout``.

Each stage's docstring says whether it communicates or reads the device on the host (a sync).
"""

from __future__ import annotations

from typing import Optional

from locmoe.config.schema import MoEConfig
from locmoe.moe.capacity import CapacityPlanner
from locmoe.moe.records import (
    Admission,
    CallPlan,
    ChunkDispatch,
    CopyLayout,
    ExpertCapacity,
    GroupStats,
    GroupView,
    RouterOutput,
    Tensor,
)
from locmoe.moe.routing import expert_choice_copies
from locmoe.moe.send_layout import SendLayout
from locmoe.moe.surface import MoEOps
from locmoe.parallel.context import ExpertParallel
from locmoe.parallel.traffic import TrafficCounter


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
        self.num_experts = moe.num_experts
        self.expert_rank = ep.placement.rank_array  # expert -> EP rank
        self.expert_slot = ep.placement.local_slot()  # expert -> its slot on that rank
        self.tables = None  # the two on the device, copied once
        self.layouts = SendLayout(ops, ep, moe, self.counter)

    # ------------------------------------------------------------------ planning
    def plan(self, out: RouterOutput, token_rank: Tensor, num_tokens: int, chunks: int, training: bool) -> CallPlan:
        """Decide which copies are kept and how each chunk of this rank's tokens moves: the group's view of
        the copies → capacity → admission → statistics → layout."""
        out = self.choose_over_group(out)
        tables = self._tables(out.expert)
        view = self.group_view(out, token_rank)
        capacity = self.capacity_of(view, out, num_tokens * self.ep.group.size, training)
        admission = self.admission(view, capacity, tables[0])
        stats = self.statistics(view, admission, capacity)
        kept = admission.kept_mine
        layout = self.layouts.of(out, token_rank, kept, capacity.per_expert, tables, num_tokens, chunks)
        return CallPlan(out, layout, stats, self.ops.ones_like(out.expert, "bool") if kept is None else kept)

    def choose_over_group(self, out: RouterOutput) -> RouterOutput:
        """Expert choice picks its copies over the group's tokens (one all-gather of the probabilities); token
        choice has them already."""
        if out.choices is not None or out.token is not None:
            return out
        gathered = self.ops.all_gather_rows(self.ops.detach(out.probs), self.ep.group)
        k = self.moe.router.top_k
        assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
        return expert_choice_copies(self.ops, out, gathered, self.ep.group.my_index, self.moe.capacity.factor, k)

    def group_view(self, out: RouterOutput, token_rank: Tensor) -> GroupView:
        """(source rank, expert, prob, angle) of every copy of the group, and which of them are mine: one
        all-gather where copies may be dropped in a group of several ranks, else nothing moves."""
        ops, group = self.ops, self.ep.group
        assert out.expert is not None and out.token is not None, "copies are filled in by choose_over_group"
        C = out.expert.shape[0]
        if out.angles is not None:
            angle = ops.take(out.angles.reshape(-1), out.token * self.num_experts + out.expert)
        else:
            angle = ops.zeros((C,), "float64", like=out.prob)
        src = ops.take(token_rank, out.token)
        if group.size == 1 or not self.capacity.drops:
            # nothing to gather: a group of one, or nothing is dropped and only counts matter (see statistics)
            return GroupView(src, out.expert, out.prob, angle, slice(None))
        columns = [ops.cast(t, "float64") for t in (out.expert, out.prob, angle, src)]
        g = ops.all_gather_rows(ops.stack(columns, axis=1), group)
        me = group.my_index
        return GroupView(
            ops.cast(g[:, 3], "int64"),
            ops.cast(g[:, 0], "int64"),
            ops.cast_like(g[:, 1], out.prob),
            g[:, 2],
            slice(me * C, (me + 1) * C),
        )

    def capacity_of(self, view: GroupView, out: RouterOutput, group_tokens: int, training: bool) -> ExpertCapacity:
        """Each expert's capacity for the group's ``group_tokens`` tokens (``capacity.CapacityPlanner``: the
        quantile rule all-reduces E counts; the cone rule reads E angles on the host)."""
        per_expert, bound = self.capacity.plan(
            view.expert, view.angle, out.angles, group_tokens, self.ep.group, training
        )
        return ExpertCapacity(per_expert, bound)

    def admission(self, view: GroupView, capacity: ExpertCapacity, rank_of: Tensor) -> Admission:
        """Which of the group's copies each expert admits, by locality then probability (on the device, no
        communication); every copy where nothing is dropped."""
        locality = self._locality(view.source, self.ops.take(rank_of, view.expert))
        if not self.capacity.drops:
            return Admission(locality, None, None)
        kept = self.ops.admit(view.expert, view.prob, locality, capacity.per_expert)
        return Admission(locality, kept, kept[view.mine])

    def statistics(self, view: GroupView, admission: Admission, capacity: ExpertCapacity) -> GroupStats:
        """Group-wide counts on the device; two all-reduces where nothing was gathered (dropless, several
        ranks), no host read."""
        ops, E, group, kept = self.ops, self.num_experts, self.ep.group, admission.kept
        load = ops.counts_of(view.expert, E)
        admitted = load if kept is None else ops.counts_of(view.expert, E, kept)
        loc = ops.counts_of(admission.locality, 3, kept)
        if group.size > 1 and not self.capacity.drops:
            # without admission each rank saw only its own copies (see group_view)
            load = ops.all_reduce(load, group)
            admitted, loc = load, ops.all_reduce(loc, group)
        return GroupStats(load, admitted, capacity.per_expert, capacity.bound, loc, ops.sum(load))

    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The expert -> rank and expert -> slot tables on the layer's device (a copy from pageable host memory
        waits for the device queue: made once)."""
        if self.tables is None or not self.ops.same_device(self.tables[0], like):
            self.tables = (
                self.ops.index_tensor(self.expert_rank, like=like),
                self.ops.index_tensor(self.expert_slot, like=like),
            )
        return self.tables

    def _locality(self, src: Tensor, dst: Tensor) -> Tensor:
        """0 on the copy's own rank, 1 in its node, 2 across nodes."""
        ops, G = self.ops, self.ep.topology.devices_per_node
        same_node = src // G == dst // G
        return ops.where(
            src == dst, ops.zeros_like(src), ops.where(same_node, ops.ones_like(src), ops.full_like(src, 2))
        )

    # ------------------------------------------------------------------ moving tokens
    def permute(self, x: Tensor, out: RouterOutput, layout: CopyLayout) -> Tensor:
        """This rank's send buffer: [M, d] rows of its copies, chunk by chunk in send order."""
        row_token = self.ops.take(out.token, layout.order)
        if out.choices is None:  # expert choice: tokens have any number of copies
            return self.ops.take_rows(x, row_token)
        assert layout.pos is not None, "token-choice routers' layouts have pos"
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
        assert out.weight is not None, "token-choice routers give their weights"
        kept = None if layout.kept is None else layout.kept.reshape(T, k)
        return ops.combine_copies(rows, out.weight.reshape(T, k), layout.pos, kept, row_token, layout.order)
