"""The MoE layer for serving: training's flow (``locmoe.moe.layer.moe_forward``: route → plan → permute →
experts → weighted combine) with the chunk count of the cost model and serving's expert pipeline. The parts
are training's (``locmoe.moe.parts.build_moe_parts``), so the parameter names (``moe.router.*``,
``moe.experts.*``) and the routing decisions are the same; no losses, no gradients, and the execution
options of :class:`ServeOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
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
from locmoe.moe.layer import CallOptions, moe_forward
from locmoe.moe.parts import build_moe_parts
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


@dataclass
class PipelineRun:
    """What the expert pipeline of one call did (filled in by ``InferenceMoE._pipeline``)."""

    layout: Optional[CopyLayout] = None
    loads: list = field(default_factory=list)  # per chunk, [E_local] rows per local expert (host)
    ran: list = field(default_factory=list)  # per chunk, the kernel that ran
    clock: Optional[StageClock] = None


class InferenceMoE(nn.Module):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, ep: ExpertParallel, layer_id: int):
        super().__init__()
        self.moe, self.d_model, self.ep, self.layer_id = moe, d_model, ep, layer_id
        self.ops = TorchOps(fuse=moe.fuse_kernels)
        # the expert kernel is chosen per call (``_kernel``): the experts are built with impl "auto"
        experts = partial(GroupedExperts, fuse=moe.fuse_kernels)
        parts = build_moe_parts(moe, self.ops, ep, d_model, vocab_size, Router, experts, expert_impl="auto")
        self.router, self.experts = parts.router, parts.experts
        self.traffic, self.dispatcher = parts.traffic, parts.dispatcher
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
        rank, so that every rank picks the same chunk count). The training layer's flow
        (``locmoe.moe.layer.moe_forward``) with serving's options: this rank's tokens, no losses, the chunk
        count of the cost model, and serving's expert pipeline."""
        plan, run = self._plan(x, tokens_per_rank, opts), PipelineRun()
        call = CallOptions(
            chunks=plan.chunks,
            own_tokens=True,
            losses=False,
            check_finite=False,
            pipeline=partial(self._pipeline, run, plan.order, x.device, opts),
        )
        y, _, _ = moe_forward(self.ops, self, x, token_ids, domain, False, call)
        assert run.layout is not None  # set by ``_pipeline``
        if run.layout.counts is not None:
            self.previous = run.layout.counts.sum(axis=1)
        if opts.record:
            self.calls.append(self._record(x.shape[0], plan, run, x, opts))
        return y

    def _pipeline(
        self, run: PipelineRun, order: str, device, opts: ServeOptions, send: torch.Tensor, layout: CopyLayout
    ):
        """send [M, d] -> finish() -> the rows back, through serving's pipeline (lanes, a kernel per chunk)."""
        run.layout, run.loads = layout, self._chunk_loads(layout)
        kernels = [self._kernel(ld, opts) for ld in run.loads]
        run.clock = StageClock(device) if opts.timeline else None
        lanes = Lanes(device, opts.overlap and self.ep.distributed)
        rows, run.ran = run_pipeline(self.experts, send, layout, run.loads, kernels, order, lanes, run.clock)
        return lambda: rows

    # ------------------------------------------------------------------ decisions
    def _plan(self, x: torch.Tensor, tokens_per_rank: list, opts: ServeOptions) -> PipelinePlan:
        fixed = 1 if opts.mode == "plain" or not self.ep.distributed else opts.chunks
        order = "interleaved" if opts.order == "auto" else opts.order
        if fixed:
            return PipelinePlan(fixed, order, 0.0, 0.0, ())
        El = len(self.ep.local_experts)
        top_k = self.moe.router.top_k
        assert opts.profile is not None  # chunks = 0 needs one (``ServeOptions`` checks)
        assert top_k is not None  # resolved (``locmoe.config.checks.resolve_and_check``)
        orders = (order,) if opts.order != "auto" else ("interleaved", "dispatch_first")
        return plan_pipeline(
            opts.profile,
            lambda n: expected_counts(tokens_per_rank, top_k, El, n, self.previous),
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

    def _record(self, T: int, plan: PipelinePlan, run: PipelineRun, x: torch.Tensor, opts: ServeOptions) -> LayerCall:
        pred = pred_serial = None
        assert run.layout is not None  # set by ``_pipeline``
        counts = run.layout.counts
        if opts.profile is not None:
            counts = counts if counts is not None else np.stack(run.loads)[None, :, None, :]
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
            run.ran,
            np.sum(run.loads, axis=0),
            pred,
            pred_serial,
            run.clock.read() if run.clock is not None else {},
        )
