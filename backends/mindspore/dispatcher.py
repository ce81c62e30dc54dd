"""Token dispatcher: capacity and admission over the whole EP group, then permute → all-to-all → expert-major
order for the experts, and the mirror image for the combine.

Mirrors ``locmoe.routing.dispatch_plan`` and ``backends.torch.dispatcher``: a rank's send buffer holds its
kept copies by (destination rank, expert slot, copy id); the experts process theirs by (slot, source rank,
copy id). Admission is global, so every rank all-gathers the compact routing decisions (expert, probability,
angle per copy) of the group — except in dropless mode and for expert choice, where nothing is dropped and
only counts are exchanged. Split sizes and per-expert counts are host integers (read once per call).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from backends.mindspore import routing_extras as extras
from backends.mindspore import routing_ops as rops
from backends.mindspore.all_to_all_schemes import FlatAllToAll, HierarchicalAllToAll
from backends.mindspore.collectives import TrafficCounter, all_gather_rows, all_reduce
from backends.mindspore.distributed import ExpertParallel
from backends.mindspore.permute import copy_positions, take_rows, unpermute_tokens
from backends.mindspore.router import Router, RouterOutput
from locmoe.config.schema import MoEConfig
from locmoe.routing import capacity as cap
from locmoe.routing import paper_bound
from locmoe.routing.dispatch_plan import chunk_permutation


@dataclass
class Dispatch:
    """One chunk's movement plan on this rank."""
    order: Tensor                       # the chunk's kept copies (router copy ids) in send order
    expert_counts: list                 # [E_local] rows each local expert processes (host ints)
    recv_perm: Optional[np.ndarray]     # receive buffer -> expert-major (None in one process)
    exchange: object                    # FlatAllToAll / HierarchicalAllToAll, or None in one process


@dataclass
class Layout:
    """This rank's kept copies in send order, all chunks one after the other."""
    order: Tensor                       # [M] router copy ids
    bounds: list                        # chunk c is rows bounds[c] .. bounds[c+1]
    kept: Optional[Tensor]              # [C] kept mask, None when every copy is kept
    chunks: list                        # one Dispatch per chunk
    pos: Optional[Tensor]               # [T, k] row of each copy (token-choice routers), else None


@dataclass
class GroupStats:
    """Routing statistics of the whole EP group for one layer call (host arrays)."""
    expert_load: np.ndarray        # [E] copies routed before capacity
    admitted: np.ndarray           # [E] copies processed
    capacity: np.ndarray           # [E]
    capacity_bound: Optional[int]  # angular bound (mode bound)
    locality_counts: np.ndarray    # [3] kept copies on-rank / in-node / cross-node
    total_copies: int


class TokenDispatcher:
    def __init__(self, ep: ExpertParallel, moe: MoEConfig, counter: Optional[TrafficCounter] = None):
        self.ep, self.moe = ep, moe
        self.counter = counter if counter is not None else TrafficCounter()
        self.E, self.W = moe.num_experts, ep.topology.world_size
        self.El = len(ep.local_experts)
        pl = ep.placement
        self.rank_of = Tensor(pl.rank_array)
        self.slot_of = Tensor(pl.local_slot())
        self.admission_needed = moe.router.kind != "expert_choice" and moe.capacity.mode != "dropless"

    # ------------------------------------------------------------------ planning
    def plan(self, out: RouterOutput, router: Router, token_rank: Tensor, num_tokens: int,
             chunks: int = 1) -> tuple[Layout, GroupStats, Tensor]:
        """Decide which copies are kept and how each chunk of this rank's tokens moves.

        Returns the layout of this rank's copies, the group's statistics, and ``kept`` [C] for its copies.
        """
        src, g_expert, g_prob, g_angle, mine = self._group_view(out, token_rank)
        T_group = num_tokens * (self.W if self.ep.distributed else 1)
        capacity, bound = self._capacity(out, router, g_expert, g_angle, T_group)
        locality = self._locality(src, ops.gather(self.rank_of, g_expert, 0))
        kept = rops.admit(g_expert, g_prob, locality, Tensor(capacity)) if self.admission_needed else \
            ops.ones(g_expert.shape, ms.bool_)
        kept_mine = kept[mine]
        dst, slot = ops.gather(self.rank_of, out.expert, 0), ops.gather(self.slot_of, out.expert, 0)
        chunk_of = out.token * chunks // num_tokens
        C = out.expert.shape[0]
        if self.ep.distributed:
            key = (chunk_of * self.W + dst) * self.El + slot
            counts = self._counts(kept_mine, key.asnumpy(), chunks)                   # [W src, chunks, W, E_l]
            sizes = counts[self.ep.ep_rank].sum(axis=(1, 2)).tolist()
            key_max = chunks * self.W * self.El
        else:
            # one process holds every expert: expert order, each expert's copies by (source rank, copy id)
            counts = None
            key = (chunk_of * self.E + out.expert) * self.W + ops.gather(token_rank, out.token, 0)
            sizes = np.bincount(chunk_of.asnumpy()[kept_mine.asnumpy()], minlength=chunks).tolist()
            key_max = chunks * self.E * self.W
        # One sort for every chunk, dropped copies last, ties by copy id (so the keys are distinct).
        key = ops.where(kept_mine, key, key_max) * C + ops.arange(C, dtype=ms.int64)
        order = rops.argsort_unique(key)
        bounds = np.cumsum([0, *sizes]).tolist()
        plans = [self._chunk(c, order[bounds[c]:bounds[c + 1]], out, counts) for c in range(chunks)]
        pos = None
        if out.choices is not None:
            pos = copy_positions(order, bounds[-1]).reshape(out.choices.shape)
        layout = Layout(order[:bounds[-1]], bounds, kept_mine if self.admission_needed else None, plans, pos)
        stats = self._stats(g_expert, kept, locality, capacity, bound)
        if router.training and router.selection_bias is not None:
            # loss-free balancing: b += γ·sign(mean load − load), from the group's load before capacity
            rate = self.moe.router.bias_update_rate
            router.selection_bias.set_data(Tensor(extras.update_selection_bias(
                router.selection_bias.asnumpy(), stats.expert_load, rate)))
        return layout, stats, kept_mine

    def _group_view(self, out: RouterOutput, token_rank: Tensor):
        """(source rank, expert, prob, angle) of every copy of the group, and which of them are mine."""
        C = out.expert.shape[0]
        if out.angles is not None:
            angle = ops.gather(out.angles.reshape(-1), out.token * self.E + out.expert, 0)
        else:
            angle = ops.zeros((C,), ms.float64)
        if not self.ep.distributed:
            return ops.gather(token_rank, out.token, 0), out.expert, out.prob, angle, slice(None)
        me = self.ep.ep_rank
        if not self.admission_needed:
            # nothing is dropped: the group view of the copies is not needed, only counts (see _counts)
            return ops.full((C,), me, dtype=ms.int64), out.expert, out.prob, angle, slice(None)
        payload = ops.stack([out.expert.astype(ms.float64), out.prob.astype(ms.float64), angle], axis=1)
        g = all_gather_rows(payload, self.ep.ep)
        src = ops.repeat_interleave(ops.arange(self.W, dtype=ms.int64), C, 0)
        return src, g[:, 0].astype(ms.int64), g[:, 1].astype(out.prob.dtype), g[:, 2], slice(me * C, (me + 1) * C)

    def _locality(self, src: Tensor, dst: Tensor) -> Tensor:
        G = self.ep.topology.devices_per_node
        same_node = src // G == dst // G
        return ops.where(src == dst, 0, ops.where(same_node, 1, 2)).astype(ms.int64)

    def _capacity(self, out: RouterOutput, router: Router, g_expert: Tensor, g_angle: Tensor,
                  T: int) -> tuple[np.ndarray, Optional[int]]:
        c, E, k = self.moe.capacity, self.E, self.moe.router.top_k
        if not self.admission_needed:
            return np.full(E, k * T, dtype=np.int64), None
        factor = cap.factor_capacity(c.factor, k, T, E)
        if c.mode == "factor":
            return np.full(E, factor, dtype=np.int64), None
        floor = cap.factor_capacity(c.min_factor, k, T, E) if c.min_factor > 0 else 1
        if c.bound_rule == "paper":
            return self._paper_capacity(router, g_expert, g_angle, T, floor, factor)
        # mode bound: the same numpy functions as the reference, on the group's angles
        quantile = 1.0 if c.bound_rule == "cone" else c.angle_quantile
        delta, seen = cap.expert_angles(g_angle.asnumpy(), g_expert.asnumpy(), E, quantile)
        ema = cap.update_angle_ema(router.angle_ema.asnumpy(), delta, seen, c.angle_momentum)
        if router.training:
            router.angle_ema.set_data(Tensor(ema))
        if c.bound_rule == "cone":
            n = E if router.gate == "grap" else router.gate_weight.shape[0]
            capacity = np.full(E, cap.capacity_lower_bound(ema, n, k, T), dtype=np.int64)
        else:
            inside = (out.angles <= Tensor(ema)[None, :]).astype(ms.float64).sum(axis=0)
            inside = all_reduce(inside, self.ep.ep).asnumpy()
            shares = inside / inside.sum() if inside.sum() > 0 else np.full(E, 1.0 / E)
            capacity = cap.per_expert_bound(shares, k, T, c.slack)
        bound = int(capacity.max())
        return np.maximum(cap.unseen_fallback(capacity, ema, factor), floor), bound

    def _paper_capacity(self, router: Router, g_expert: Tensor, g_deviation: Tensor, T: int, floor: int,
                        factor: int) -> tuple[np.ndarray, Optional[int]]:
        """LocMoE Theorem 1 from δ_max, the largest token-space cosine distance of a routed copy (the
        reference's ``paper_rule``; its state lives in ``angle_ema``)."""
        c, E, k = self.moe.capacity, self.E, self.moe.router.top_k
        d = router.grap_columns.shape[0] if router.grap_columns is not None else router.gate_weight.shape[0]
        if c.paper_delta > 0:
            bound = paper_bound.paper_capacity(c.paper_delta, d, E, k, T, c.paper_form)
            return np.full(E, max(bound, floor), dtype=np.int64), bound
        else:
            delta, seen = cap.expert_angles(g_deviation.asnumpy(), g_expert.asnumpy(), E, 1.0)
            state = paper_bound.update_paper_delta(router.angle_ema.asnumpy(), delta, seen, c.paper_schedule,
                                                   c.angle_momentum)
            if router.training:
                router.angle_ema.set_data(Tensor(state))
        if np.isnan(state).all():
            return np.full(E, max(factor, floor), dtype=np.int64), None
        bound = paper_bound.paper_capacity(float(np.nanmax(state)), d, E, k, T, c.paper_form)
        return np.full(E, max(bound, floor), dtype=np.int64), bound

    def _counts(self, kept: Tensor, key: np.ndarray, chunks: int) -> np.ndarray:
        """[W src, chunks, W dst, E_local] kept copies, from every rank (one small all-gather)."""
        mine = np.bincount(key[kept.asnumpy()], minlength=chunks * self.W * self.El)
        gathered = all_gather_rows(Tensor(mine[None]), self.ep.ep).asnumpy()
        return gathered.reshape(-1, chunks, self.W, self.El)

    def _chunk(self, c: int, order: Tensor, out: RouterOutput, counts: Optional[np.ndarray]) -> Dispatch:
        if counts is None:
            experts = ops.gather(out.expert, order, 0).asnumpy()
            return Dispatch(order, np.bincount(experts, minlength=self.E).tolist(), None, None)
        S = counts[:, c].sum(axis=-1)                                 # [W src, W dst]
        recv = counts[:, c, self.ep.ep_rank, :]                       # [W src, E_local]
        return Dispatch(order, recv.sum(axis=0).tolist(), chunk_permutation(recv), self._exchange(S))

    def _exchange(self, S: np.ndarray):
        ep = self.ep
        if ep.scheme == "hierarchical" and ep.topology.num_nodes > 1 and ep.topology.devices_per_node > 1:
            return HierarchicalAllToAll(S, ep.ep_rank, ep.topology, ep.intra, ep.inter, self.counter)
        return FlatAllToAll(S, ep.ep_rank, ep.ep, self.counter)

    def _stats(self, g_expert: Tensor, kept: Tensor, locality: Tensor, capacity: np.ndarray,
               bound: Optional[int]) -> GroupStats:
        E, expert, keep = self.E, g_expert.asnumpy(), kept.asnumpy()
        load = np.bincount(expert, minlength=E)
        admitted = np.bincount(expert[keep], minlength=E)
        loc = np.bincount(locality.asnumpy()[keep], minlength=3)
        if self.ep.distributed and not self.admission_needed:
            load = all_reduce(Tensor(load), self.ep.ep).asnumpy()
            admitted, loc = load, all_reduce(Tensor(loc), self.ep.ep).asnumpy()
        return GroupStats(load, admitted, capacity, bound, loc, int(load.sum()))

    # ------------------------------------------------------------------ moving tokens
    @staticmethod
    def permute(x: Tensor, out: RouterOutput, layout: Layout) -> Tensor:
        """This rank's send buffer: [M, d] rows of its kept copies, chunk by chunk in send order."""
        return ops.gather(x, ops.gather(out.token, layout.order, 0), 0)

    @staticmethod
    def dispatch(rows: Tensor, d: Dispatch):
        """Launch the movement of one chunk's send rows; returns ``finish`` → rows for the local experts,
        expert-major."""
        if d.exchange is None:
            return lambda: rows
        finish = d.exchange.dispatch(rows)
        return lambda: take_rows(finish(), Tensor(d.recv_perm.astype(np.int64)))

    @staticmethod
    def combine(y: Tensor, d: Dispatch):
        """Launch the return of one chunk's expert outputs; returns ``finish`` → rows in send order."""
        if d.exchange is None:
            return lambda: y
        back = np.empty_like(d.recv_perm)
        back[d.recv_perm] = np.arange(len(d.recv_perm))
        return d.exchange.combine(take_rows(y, Tensor(back.astype(np.int64))))

    @staticmethod
    def unpermute(rows: Tensor, out: RouterOutput, layout: Layout, num_tokens: int) -> Tensor:
        """Weighted sum of each token's returned copies: rows [M, d] in send order → [T, d]."""
        if out.choices is None:         # expert choice: tokens have any number of copies
            weight = take_rows(out.weight, layout.order)[:, None].astype(rows.dtype)
            token = take_rows(out.token, layout.order)
            return ops.unsorted_segment_sum(rows * weight, token, num_tokens)
        T, k = out.choices.shape
        return unpermute_tokens(rows, out.weight.reshape(T, k), layout.pos)
