"""The MoE layer: route → permute → all-to-all → grouped-GEMM experts → all-to-all back → weighted combine.

Dropped copies contribute nothing here; the token keeps its residual path in the transformer block.
With ``overlap_chunks > 1`` this rank's tokens move in chunks so that, on CUDA, one chunk's expert
compute runs while the next chunk's all-to-all is in flight (NCCL runs on its own stream; the chunks'
split sizes are all known before the first one is sent, so no host sync sits between them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function

from backends.torch import fusion
from backends.torch.collectives import TrafficCounter
from backends.torch.dispatcher import GroupStats, TokenDispatcher
from backends.torch.distributed import ExpertParallel
from backends.torch.experts import GroupedExperts
from backends.torch.router import Router
from locmoe.config.schema import MoEConfig
from locmoe.finite import NonFiniteError
from locmoe.layer_metrics import layer_summary


@dataclass
class MoEMetrics:
    """What one call of the layer reports (device tensors; read them when logging)."""
    stats: GroupStats
    aux_loss: torch.Tensor
    locality_loss: torch.Tensor
    traffic: TrafficCounter
    token: torch.Tensor            # [C] this rank's copies: local token index,
    expert: torch.Tensor           # [C] expert,
    kept: torch.Tensor             # [C] admitted or dropped

    def summary(self) -> dict:
        """Plain numbers for logs (reads the device tensors back to the host)."""
        s = self.stats
        host = [t.detach().cpu().numpy() for t in (s.expert_load, s.admitted, s.capacity, s.locality_counts)]
        bound = None if s.capacity_bound is None else int(s.capacity_bound)
        return layer_summary(*host[:3], bound, host[3], int(s.total_copies), float(self.aux_loss),
                             float(self.locality_loss), self.traffic)


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on: the router reads the residual stream's precision, the
    experts' grouped GEMMs (which autocast does not cover) and the token movement run in bf16 — half the
    bytes, and grouped_mm's bf16 kernels instead of a per-expert loop."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return x.to(torch.get_autocast_dtype(kind))
    return x


class MoELayer(nn.Module):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, ep: ExpertParallel, layer_id: int = 0):
        super().__init__()
        self.layer_id, self.d_model, self.ep, self.moe = layer_id, d_model, ep, moe
        fusion.set_enabled(moe.fuse_kernels)
        self.router = Router(moe, d_model, vocab_size, ep.placement)
        self.experts = GroupedExperts(len(ep.local_experts), d_model, moe.d_expert, moe.activation,
                                      moe.expert_impl)
        self.traffic = TrafficCounter()
        self.dispatcher = TokenDispatcher(ep, moe, self.traffic)
        r = moe.router
        self.register_buffer("nonfinite_inputs", torch.zeros((), dtype=torch.long), persistent=False)
        self.aux_coef = r.aux_loss_coef
        self.loc_coef = r.locality_loss_coef if r.kind == "locmoe" else 0.0
        self.z_coef = r.z_loss_coef                 # router z-loss (ST-MoE); 0 = off

    def forward(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None,
                domain: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, MoEMetrics]:
        """x: [..., d] -> (y [..., d], auxiliary objective α·L_aux + μ·L_loc, metrics).

        token_ids, domain: [...] per token (hash router; Random Routed Experts). In one process emulating W
        ranks, the tokens are W equal blocks, rank 0's first.
        """
        shape = x.shape
        self._check_input(x)
        x = x.reshape(-1, self.d_model)
        T = x.shape[0]
        token_rank = self._token_ranks(T, x.device)
        flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731
        emulated_ranks = 1 if self.ep.distributed else self.ep.topology.world_size
        with record_function("moe/router"):
            out = self.router(x, token_rank, emulated_ranks, flat(token_ids), flat(domain),
                              gather=self._gather, ep_rank=self.ep.ep_rank if self.ep.distributed else 0)
        self.traffic.reset()
        with record_function("moe/capacity+admission"):
            layout, stats, kept = self.dispatcher.plan(out, self.router, token_rank, T, self.moe.overlap_chunks)
        with record_function("moe/permute"):
            send = self.dispatcher.permute(_compute_dtype(x), out, layout)
        # split, not slices: a slice's backward zero-fills a buffer of the whole send size per chunk
        parts = send.split(list(np.diff(layout.bounds))) if len(layout.chunks) > 1 else [send]
        # Pipeline: every chunk's dispatch is launched first; chunk i's experts run while chunk i+1 is in
        # flight, and chunk i's combine travels while chunk i+1's experts run.
        with record_function("moe/all_to_all"):
            arriving = [self.dispatcher.dispatch(part, d) for part, d in zip(parts, layout.chunks)]
        returning = []
        for d, rows in zip(layout.chunks, arriving):
            with record_function("moe/experts"):
                y = self.experts(rows(), d.expert_counts, d.dropped_tail)
            with record_function("moe/all_to_all"):
                returning.append(self.dispatcher.combine(y, d))
        with record_function("moe/combine"):
            back = [rows() for rows in returning]
            y = self.dispatcher.unpermute(back[0] if len(back) == 1 else torch.cat(back), out, layout, T)
        aux = self.aux_coef * out.aux_loss + self.loc_coef * out.locality_loss
        if self.z_coef:
            aux = aux + self.z_coef * out.z_loss
        metrics = MoEMetrics(stats, out.aux_loss.detach(), out.locality_loss.detach(), self.traffic, out.token,
                             out.expert, kept)
        return y.reshape(shape), aux, metrics

    def _token_ranks(self, T: int, device) -> torch.Tensor:
        if self.ep.distributed:
            return torch.full((T,), self.ep.ep_rank, dtype=torch.long, device=device)
        W = self.ep.topology.world_size
        if T % W:
            raise ValueError(f"MoE layer {self.layer_id}: one process emulating {W} ranks needs a token count "
                             f"divisible by {W}, got {T}")
        return torch.arange(W, device=device).repeat_interleave(T // W)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        from backends.torch.collectives import all_gather_rows

        return all_gather_rows(t, self.ep.ep) if self.ep.distributed else t

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoE layer {self.layer_id}: expected hidden size {self.d_model}, got {x.shape[-1]} "
                             f"(input shape {tuple(x.shape)})")
        if not self.moe.check_finite:
            return
        bad = (~torch.isfinite(x.detach())).sum()
        if x.device.type == "cpu":
            self._raise_if_nonfinite(int(bad))
        else:
            # NOTE: reading the count back would sync the host every layer: it is kept on the device and read
            # by ``check_finite_inputs`` (the training loop calls it on logging and checkpoint steps)
            self.nonfinite_inputs += bad

    def check_finite_inputs(self) -> None:
        """Raise if any input since the last check held NaN/Inf (a host sync: call it on logging steps)."""
        bad = int(self.nonfinite_inputs)
        self.nonfinite_inputs.zero_()
        self._raise_if_nonfinite(bad)

    def _raise_if_nonfinite(self, bad: int) -> None:
        if bad:
            raise NonFiniteError(f"MoE layer {self.layer_id} on rank {self.ep.ep_rank}: the input "
                                 f"activations hold {bad} non-finite values (NaN/Inf)")
