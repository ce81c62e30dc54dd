"""The MoE layer for serving: route → plan (chunk count from the cost model) → permute → expert pipeline →
weighted combine. Same router, dispatcher and expert weights as training's ``MoELayer``, so the parameter
names (``moe.router.*``, ``moe.experts.*``) and the routing decisions are the same; no losses, no
gradients, and the execution options of :class:`ServeOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from backends.torch.distributed import ExpertParallel
from backends.torch.experts import GroupedExperts
from backends.torch.inference.lanes import Lanes
from backends.torch.inference.options import ServeOptions
from backends.torch.inference.pipeline import run_pipeline
from backends.torch.inference.timing import StageClock
from backends.torch.moe_ops import TorchOps
from backends.torch.router import Router
from locmoe.config.schema import MoEConfig
from locmoe.inference.cost_model import choose_kernel
from locmoe.inference.pipeline_plan import PipelinePlan, chunk_costs, expected_counts, plan_pipeline, serial, simulate
from locmoe.moe.capacity import CapacityPlanner
from locmoe.moe.dispatcher import TokenDispatcher
from locmoe.moe.records import CopyLayout


@dataclass
class LayerCall:
    """What one call of an MoE layer did."""

    layer: int
    tokens: int  # on this rank
    chunks: int
    order: str
    kernels: list  # per chunk, the kernel that ran
    loads: np.ndarray  # [E_local] rows per local expert, all chunks
    predicted_s: Optional[float]  # the cost model on the actual counts (None without a profile)
    predicted_serial_s: Optional[float]
    timeline: dict = field(default_factory=dict)  # stage -> ms since the send buffer was ready


class InferenceMoE(nn.Module):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, ep: ExpertParallel, layer_id: int):
        super().__init__()
        self.moe, self.d_model, self.ep, self.layer_id = moe, d_model, ep, layer_id
        self.ops = TorchOps(fuse=moe.fuse_kernels)
        self.router = Router(moe, d_model, vocab_size, ep.placement, self.ops)
        self.experts = GroupedExperts(
            len(ep.local_experts), d_model, moe.d_expert, moe.activation, fuse=moe.fuse_kernels
        )
        gate_rows = moe.num_experts if moe.router.gate == "grap" else d_model
        capacity = CapacityPlanner(self.ops, moe, self.router, gate_rows, d_model)
        self.dispatcher = TokenDispatcher(self.ops, ep, moe, capacity)
        self.previous: Optional[np.ndarray] = None  # [W, W, E_local] last call's routed copies
        self.calls: list[LayerCall] = []

    def forward(
        self,
        x: torch.Tensor,
        token_ids: torch.Tensor,
        domain: Optional[torch.Tensor],
        tokens_per_rank: list,
        opts: ServeOptions,
    ) -> torch.Tensor:
        """x: [T, d] this rank's tokens; ``tokens_per_rank`` [W] every rank's T (the same list on every
        rank, so that every rank picks the same chunk count)."""
        T = x.shape[0]
        token_rank = torch.full((T,), self.ep.rank, dtype=torch.long, device=x.device)
        local = self.router.node_mask[token_rank // self.ep.topology.devices_per_node]
        out = self.router(x, local, 1, token_ids, domain)
        plan = self._plan(x, tokens_per_rank, opts)
        out, layout, _, _ = self.dispatcher.plan(out, token_rank, T, plan.chunks, training=False)
        send = self.dispatcher.permute(x, out, layout)
        loads = self._chunk_loads(layout)
        kernels = [self._kernel(ld, opts) for ld in loads]
        clock = StageClock(x.device) if opts.timeline else None
        rows, ran = run_pipeline(
            self.experts,
            send,
            layout,
            loads,
            kernels,
            plan.order,
            Lanes(x.device, opts.overlap and self.ep.distributed),
            clock,
        )
        y = self.dispatcher.unpermute(rows, out, layout, T)
        if layout.counts is not None:
            self.previous = layout.counts.sum(axis=1)
        if opts.record:
            self.calls.append(self._record(T, plan, ran, loads, layout, x, opts, clock))
        return y

    # ------------------------------------------------------------------ decisions
    def _plan(self, x: torch.Tensor, tokens_per_rank: list, opts: ServeOptions) -> PipelinePlan:
        fixed = 1 if opts.mode == "plain" or not self.ep.distributed else opts.chunks
        order = "interleaved" if opts.order == "auto" else opts.order
        if fixed:
            return PipelinePlan(fixed, order, 0.0, 0.0, ())
        El = len(self.ep.local_experts)
        orders = (order,) if opts.order != "auto" else ("interleaved", "dispatch_first")
        return plan_pipeline(
            opts.profile,
            lambda n: expected_counts(tokens_per_rank, self.moe.router.top_k, El, n, self.previous),
            self.d_model,
            self.moe.d_expert,
            self.moe.activation,
            x.element_size(),
            orders=orders,
        )

    def _chunk_loads(self, layout: CopyLayout) -> list[np.ndarray]:
        if layout.counts is not None:
            me = self.ep.rank
            return [layout.counts[:, c, me, :].sum(axis=0) for c in range(len(layout.chunks))]
        return [d.expert_counts.cpu().numpy() for d in layout.chunks]  # one process: one sync

    def _kernel(self, loads: np.ndarray, opts: ServeOptions) -> str:
        if opts.kernel != "auto":
            return opts.kernel
        if opts.profile is None:
            return "grouped"
        return choose_kernel(opts.profile, loads, self.d_model, self.moe.d_expert, self.moe.activation).kernel

    def _record(self, T, plan, ran, loads, layout, x, opts, clock) -> LayerCall:
        pred = pred_serial = None
        if opts.profile is not None:
            counts = layout.counts if layout.counts is not None else np.stack(loads)[None, :, None, :]
            if counts.shape[0] == 1 or opts.profile.all_to_all is not None:
                costs = chunk_costs(
                    opts.profile, counts, self.d_model, self.moe.d_expert, self.moe.activation, x.element_size()
                )
                pred = simulate(costs, plan.order) if opts.overlap else serial(costs)
                pred_serial = serial(costs)
        return LayerCall(
            self.layer_id,
            T,
            plan.chunks,
            plan.order,
            ran,
            np.sum(loads, axis=0),
            pred,
            pred_serial,
            clock.read() if clock is not None else {},
        )
