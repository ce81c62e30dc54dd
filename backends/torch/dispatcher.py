"""Token dispatcher: capacity and admission over the whole EP group, then permute → all-to-all → expert-major
sort for the grouped GEMM, and the mirror image for the combine.

Mirrors ``locmoe.routing.dispatch_plan``: a rank's send buffer holds its kept copies by (destination rank,
expert slot, copy id); the experts process theirs by (slot, source rank, copy id). Admission is global, so
every rank all-gathers the compact routing decisions (expert, probability, angle per copy) of the group —
except in dropless mode and for expert choice, where nothing is dropped and only counts are exchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from backends.torch import routing_extras as extras
from backends.torch import routing_ops as ops
from backends.torch.all_to_all_schemes import FlatAllToAll, HierarchicalAllToAll
from backends.torch.collectives import TrafficCounter, all_gather_rows, all_reduce_
from backends.torch.distributed import ExpertParallel
from backends.torch.permute import PermuteTokens, UnpermuteTokens, copy_positions
from backends.torch.router import Router, RouterOutput
from locmoe.config.schema import MoEConfig
from locmoe.routing import capacity as cap
from locmoe.routing.dispatch_plan import chunk_permutation


@dataclass
class Dispatch:
    """One chunk's movement plan on this rank."""
    order: torch.Tensor                # the chunk's kept copies (router copy ids) in send order
    expert_counts: torch.Tensor        # [E_local] rows each local expert processes
    recv_perm: Optional[torch.Tensor]  # receive buffer -> expert-major (None in one process)
    exchange: object                   # FlatAllToAll / HierarchicalAllToAll, or None in one process
    dropped_tail: bool = False         # rows past sum(expert_counts) are dropped copies (one process)


@dataclass
class Layout:
    """This rank's kept copies in send order, all chunks one after the other."""
    order: torch.Tensor                # [M] router copy ids
    bounds: list                       # chunk c is rows bounds[c] .. bounds[c+1]
    kept: Optional[torch.Tensor]       # [C] kept mask, None when every copy is kept
    chunks: list                       # one Dispatch per chunk
    pos: Optional[torch.Tensor]        # [T, k] row of each copy (token-choice routers), else None
    counts: Optional[np.ndarray] = None  # [W src, chunks, W dst, E_local] kept copies (host; EP only)


@dataclass
class GroupStats:
    """Routing statistics of the whole EP group for one layer call (device tensors unless noted)."""
    expert_load: torch.Tensor      # [E] copies routed before capacity
    admitted: torch.Tensor         # [E] copies processed
    capacity: torch.Tensor         # [E]
    capacity_bound: Optional[torch.Tensor]  # scalar angular bound (mode bound), else None
    locality_counts: torch.Tensor  # [3] kept copies on-rank / in-node / cross-node
    total_copies: torch.Tensor     # scalar


class TokenDispatcher:
    def __init__(self, ep: ExpertParallel, moe: MoEConfig, counter: Optional[TrafficCounter] = None):
        self.ep, self.moe = ep, moe
        self.counter = counter if counter is not None else TrafficCounter()
        self.E, self.W = moe.num_experts, ep.topology.world_size
        self.El = len(ep.local_experts)
        pl = ep.placement
        self.rank_of = torch.from_numpy(pl.rank_array)
        self.slot_of = torch.from_numpy(pl.local_slot())
        self.admission_needed = moe.router.kind != "expert_choice" and moe.capacity.mode != "dropless"

    # ------------------------------------------------------------------ planning
    def plan(self, out: RouterOutput, router: Router, token_rank: torch.Tensor, num_tokens: int,
             chunks: int = 1) -> tuple[Layout, GroupStats, torch.Tensor]:
        """Decide which copies are kept and how each chunk of this rank's tokens moves.

        Returns the layout of this rank's copies, the group's statistics, and ``kept`` [C] for its copies.

        NOTE: host syncs. In one process there are none: capacity, admission and statistics stay on the device
        and every buffer has a fixed size (the C copies, dropped ones last). With expert parallelism there is
        exactly one, in ``_counts``: the all-to-all split sizes must be on the host. (The ``cone`` bound rule
        adds one more: its sphere-cap areas are scipy's betainc on the host.)
        """
        dev = out.expert.device
        rank_of, slot_of = self._on(dev)
        src, g_expert, g_prob, g_angle, mine = self._group_view(out, token_rank)
        T_group = num_tokens * (self.W if self.ep.distributed else 1)
        capacity, bound = self._capacity(out, router, g_expert, g_angle, T_group, dev)
        locality = self._locality(src, rank_of[g_expert])
        kept = ops.admit(g_expert, g_prob, locality, capacity) if self.admission_needed else None
        kept_mine = None if kept is None else kept[mine]
        stats = self._stats(g_expert, kept, locality, capacity, bound)
        extras.update_selection_bias_(router, stats.expert_load)        # loss-free balancing (training only)
        all_kept = kept_mine is None
        if all_kept:
            kept_mine = torch.ones_like(out.expert, dtype=torch.bool)
        if not self.ep.distributed:
            return self._plan_one_process(out, token_rank, None if all_kept else kept_mine), stats, kept_mine
        dst, slot = rank_of[out.expert], slot_of[out.expert]
        chunk_of = torch.div(out.token * chunks, num_tokens, rounding_mode="floor")
        counts = self._counts(kept_mine, dst, slot, chunk_of, chunks)              # host numpy: the one sync
        key = (chunk_of * self.W + dst) * self.El + slot
        sizes = counts[self.ep.ep_rank].sum(axis=(1, 2)).tolist()
        # One stable sort for every chunk, dropped copies last; the chunk sizes come from the host counts.
        key = torch.where(kept_mine, key, torch.iinfo(key.dtype).max)
        order = torch.sort(key, stable=True).indices
        bounds = np.cumsum([0, *sizes]).tolist()
        plans = [self._chunk(c, order[bounds[c]:bounds[c + 1]], counts) for c in range(chunks)]
        kept_order = order[:bounds[-1]]
        layout = Layout(kept_order, bounds, kept_mine if self.admission_needed else None, plans,
                        self._positions(out, kept_order), counts)
        return layout, stats, kept_mine

    def _on(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The expert -> rank and expert -> slot tables on ``dev``, copied once (a copy from pageable host
        memory waits for the device queue)."""
        if self.rank_of.device != dev:
            self.rank_of, self.slot_of = self.rank_of.to(dev), self.slot_of.to(dev)
        return self.rank_of, self.slot_of

    def _plan_one_process(self, out: RouterOutput, token_rank: torch.Tensor, kept: Optional[torch.Tensor]) -> Layout:
        """One process holds every expert: all C copies in expert order (each expert's by source rank, then
        copy id), dropped copies last. The buffer keeps its fixed size C, so no count reaches the host; the
        experts give dropped rows zeros (``Dispatch.dropped_tail``) and the combine weighs them 0. Chunks
        only overlap communication, so there is one here."""
        E, W, C = self.E, self.W, out.expert.numel()
        key = out.expert * W + token_rank[out.token]
        if kept is not None:
            key = torch.where(kept, key, E * W)
        order = torch.sort(key, stable=True).indices
        counts = ops.counts_of(out.expert, E, kept)
        plan = Dispatch(order, counts, None, None, dropped_tail=kept is not None)
        return Layout(order, [0, C], kept, [plan], self._positions(out, order))

    @staticmethod
    def _positions(out: RouterOutput, order: torch.Tensor) -> Optional[torch.Tensor]:
        """[T, k] row of each copy in the buffer holding ``order`` (token-choice routers), else None."""
        if out.choices is None:
            return None
        T, k = out.choices.shape
        return copy_positions(order, order.numel(), T * k).view(T, k)

    def _group_view(self, out: RouterOutput, token_rank: torch.Tensor):
        """(source rank, expert, prob, angle) of every copy of the group, and which of them are mine."""
        angle = out.angles[out.token, out.expert] if out.angles is not None else torch.zeros_like(out.prob).double()
        if not self.ep.distributed:
            return token_rank[out.token], out.expert, out.prob, angle, slice(None)
        if not self.admission_needed:
            # nothing is dropped: the group view of the copies is not needed, only counts (see _counts)
            me = self.ep.ep_rank
            return torch.full_like(out.expert, me), out.expert, out.prob, angle, slice(None)
        C = out.expert.numel()
        payload = torch.stack([out.expert.double(), out.prob.double(), angle.double()], dim=1)
        g = all_gather_rows(payload, self.ep.ep)
        src = torch.arange(self.W, device=g.device).repeat_interleave(C)
        me = self.ep.ep_rank
        return src, g[:, 0].long(), g[:, 1].to(out.prob.dtype), g[:, 2], slice(me * C, (me + 1) * C)

    def _locality(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        G = self.ep.topology.devices_per_node
        same_node = torch.div(src, G, rounding_mode="floor") == torch.div(dst, G, rounding_mode="floor")
        return torch.where(src == dst, 0, torch.where(same_node, 1, 2))

    def _capacity(self, out, router, g_expert, g_angle, T, dev) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """[E] capacities and the angular bound (mode bound), on the device."""
        c, E, k = self.moe.capacity, self.E, self.moe.router.top_k
        if not self.admission_needed:
            return torch.full((E,), k * T, dtype=torch.long, device=dev), None
        if c.mode == "factor":
            return torch.full((E,), cap.factor_capacity(c.factor, k, T, E), dtype=torch.long, device=dev), None
        if c.bound_rule == "paper":                                       # LocMoE Theorem 1 (token space)
            return extras.paper_rule_capacity(router, self.moe, g_expert, g_angle, T, dev)
        # mode bound: the per-copy work (angles per expert, EMA) on the device, bit-identical to the numpy
        # reference
        floor = cap.factor_capacity(c.min_factor, k, T, E) if c.min_factor > 0 else 1
        factor_cap = cap.factor_capacity(c.factor, k, T, E)
        if c.bound_rule == "quantile":
            ordered, counts = ops.sort_by_expert(g_angle.double(), g_expert, E)
            ema, inside = ops.quantile_cone_counts(ordered, counts, router.angle_ema, out.angles, c.angle_quantile,
                                                   c.angle_momentum)
            self._keep_angle_average(router, ema)
            return ops.quantile_capacity(all_reduce_(inside, self.ep.ep), ema, k, T, c.slack, floor, factor_cap)
        # the cone rule: the max angle per expert
        delta, seen = ops.expert_angles(g_angle, g_expert, E, 1.0)
        ema = ops.update_angle_ema(router.angle_ema, delta, seen, c.angle_momentum)
        self._keep_angle_average(router, ema)
        # NOTE: a host sync: the sphere-cap areas are scipy's betainc (E numbers move)
        n = E if router.gate == "grap" else router.gate_weight.shape[0]
        bound = cap.capacity_lower_bound(ema.cpu().numpy(), n, k, T)
        capacity = torch.full((E,), bound, dtype=torch.long, device=dev)
        return torch.clamp(ops.unseen_fallback(capacity, ema, factor_cap), min=floor), capacity.max()

    @staticmethod
    def _keep_angle_average(router, ema: torch.Tensor) -> None:
        """The router keeps the updated angle average while training (evaluation leaves it as it was)."""
        if router.training:
            router.angle_ema.copy_(ema)

    def _counts(self, kept, dst, slot, chunk_of, chunks) -> np.ndarray:
        """[W src, chunks, W dst, E_local] kept copies, from every rank (one small all-gather; the host reads
        it once, which is the only sync the split sizes need)."""
        flat = (chunk_of * self.W + dst) * self.El + slot
        mine = ops.counts_of(flat, chunks * self.W * self.El, kept)
        return all_gather_rows(mine[None], self.ep.ep).reshape(-1, chunks, self.W, self.El).cpu().numpy()

    def _chunk(self, c: int, order: torch.Tensor, counts: np.ndarray) -> Dispatch:
        S = counts[:, c].sum(axis=-1)                                 # [W src, W dst]
        recv = counts[:, c, self.ep.ep_rank, :]                       # [W src, E_local]
        perm = torch.from_numpy(chunk_permutation(recv)).to(order.device)
        return Dispatch(order, torch.from_numpy(recv.sum(axis=0)).to(order.device), perm, self._exchange(S))

    def _exchange(self, S: np.ndarray):
        ep = self.ep
        if ep.scheme == "hierarchical" and ep.topology.num_nodes > 1 and ep.topology.devices_per_node > 1:
            return HierarchicalAllToAll(S, ep.ep_rank, ep.topology, ep.intra, ep.inter, self.counter)
        return FlatAllToAll(S, ep.ep_rank, ep.ep, self.counter)

    def _stats(self, g_expert, kept, locality, capacity, bound) -> GroupStats:
        """Group-wide counts on the device (``kept`` None: every copy is kept)."""
        E = self.E
        load = ops.counts_of(g_expert, E)
        admitted = load if kept is None else ops.counts_of(g_expert, E, kept)
        loc = ops.counts_of(locality, 3, kept)
        if self.ep.distributed and not self.admission_needed:
            # without admission each rank saw only its own copies (see _group_view)
            load = all_reduce_(load.clone(), self.ep.ep)
            admitted, loc = load, all_reduce_(loc.clone(), self.ep.ep)
        return GroupStats(load, admitted, capacity, bound, loc, load.sum())

    # ------------------------------------------------------------------ moving tokens
    def permute(self, x: torch.Tensor, out: RouterOutput, layout: Layout) -> torch.Tensor:
        """This rank's send buffer: [M, d] rows of its kept copies, chunk by chunk in send order."""
        if out.choices is None:         # expert choice: tokens have any number of copies
            return x.index_select(0, out.token.index_select(0, layout.order))
        kept = None if layout.kept is None else layout.kept.view(layout.pos.shape)
        return PermuteTokens.apply(x, out.token.index_select(0, layout.order), layout.pos, kept)

    def dispatch(self, rows: torch.Tensor, d: Dispatch):
        """Launch the movement of one chunk's send rows; returns ``finish`` → rows for the local experts,
        expert-major."""
        if d.exchange is None:
            return lambda: rows
        finish = d.exchange.dispatch(rows)
        return lambda: finish().index_select(0, d.recv_perm)

    def combine(self, y: torch.Tensor, d: Dispatch):
        """Launch the return of one chunk's expert outputs; returns ``finish`` → rows in send order."""
        if d.exchange is None:
            return lambda: y
        back = torch.empty_like(d.recv_perm)
        back[d.recv_perm] = torch.arange(d.recv_perm.numel(), device=back.device)
        return d.exchange.combine(y.index_select(0, back))

    @staticmethod
    def unpermute(rows: torch.Tensor, out: RouterOutput, layout: Layout, num_tokens: int) -> torch.Tensor:
        """Weighted sum of each token's returned copies: rows [M, d] in send order → [T, d]."""
        if out.choices is None:
            weighted = rows * out.weight.index_select(0, layout.order)[:, None].to(rows.dtype)
            return rows.new_zeros(num_tokens, rows.shape[1]).index_add(
                0, out.token.index_select(0, layout.order), weighted)
        T, k = out.choices.shape
        weight = out.weight.view(T, k)
        if layout.kept is not None:
            weight = weight * layout.kept.view(T, k)     # dropped copies weigh nothing
        return UnpermuteTokens.apply(rows, weight.to(rows.dtype), layout.pos,
                                     out.token.index_select(0, layout.order), layout.order)
