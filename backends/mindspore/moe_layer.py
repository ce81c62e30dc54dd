"""The MoE layer: route → permute → all-to-all → experts → all-to-all back → weighted combine.

Mirrors ``backends.torch.moe_layer`` (same parameter names: ``router.gate_weight`` for a learned gate,
``experts.w1/w2/w3``). Dropped copies contribute nothing here; the token keeps its residual path in the
transformer block. With ``overlap_chunks > 1`` this rank's tokens move in chunks, as in the torch backend;
the collectives run synchronously for now (see ``collectives.all_to_all_start``), so the chunks give the same
results and byte counts but no overlap yet. PyNative only: the dispatcher reads split sizes and expert counts
on the host once per call (the model builder may compile the dense blocks with ``jit``, not this layer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mindspore as ms
from mindspore import Tensor, nn, ops

from backends.mindspore.collectives import TrafficCounter, all_gather_rows
from backends.mindspore.dispatcher import GroupStats, TokenDispatcher
from backends.mindspore.distributed import ExpertParallel
from backends.mindspore.experts import GroupedExperts
from backends.mindspore.router import Router
from locmoe.config.schema import MoEConfig
from locmoe.finite import NonFiniteError
from locmoe.layer_metrics import layer_summary


@dataclass
class MoEMetrics:
    """What one call of the layer reports (stats on the host; losses and copies as tensors)."""
    stats: GroupStats
    aux_loss: Tensor
    locality_loss: Tensor
    traffic: TrafficCounter
    token: Tensor                  # [C] this rank's copies: local token index,
    expert: Tensor                 # [C] expert,
    kept: Tensor                   # [C] admitted or dropped

    def summary(self) -> dict:
        """Plain numbers for logs."""
        s = self.stats
        return layer_summary(s.expert_load, s.admitted, s.capacity, s.capacity_bound, s.locality_counts,
                             s.total_copies, float(self.aux_loss.asnumpy()), float(self.locality_loss.asnumpy()),
                             self.traffic)


class MoELayer(nn.Cell):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, ep: ExpertParallel, layer_id: int = 0):
        super().__init__()
        self.layer_id, self.d_model, self.ep, self.moe = layer_id, d_model, ep, moe
        self.router = Router(moe, d_model, vocab_size, ep.placement)
        self.experts = GroupedExperts(len(ep.local_experts), d_model, moe.d_expert, moe.activation,
                                      moe.expert_impl)
        self.traffic = TrafficCounter()
        self.dispatcher = TokenDispatcher(ep, moe, self.traffic)
        r = moe.router
        self.aux_coef = r.aux_loss_coef
        self.loc_coef = r.locality_loss_coef if r.kind == "locmoe" else 0.0
        self.z_coef = r.z_loss_coef                 # router z-loss (ST-MoE); 0 = off

    def construct(self, x: Tensor, token_ids: Optional[Tensor] = None,
                  domain: Optional[Tensor] = None) -> tuple[Tensor, Tensor, MoEMetrics]:
        """x: [..., d] -> (y [..., d], auxiliary objective α·L_aux + μ·L_loc, metrics).

        token_ids, domain: [...] per token (hash router; Random Routed Experts). In one process emulating W
        ranks, the tokens are W equal blocks, rank 0's first.
        """
        shape = x.shape
        self._check_input(x, domain)
        x = x.reshape(-1, self.d_model)
        T = x.shape[0]
        token_rank = self._token_ranks(T)
        flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731
        emulated_ranks = 1 if self.ep.distributed else self.ep.topology.world_size
        out = self.router(x, token_rank, emulated_ranks, flat(token_ids), flat(domain),
                          gather=self._gather, ep_rank=self.ep.ep_rank if self.ep.distributed else 0)
        self.traffic.reset()
        layout, stats, kept = self.dispatcher.plan(out, self.router, token_rank, T, self.moe.overlap_chunks)
        send = self.dispatcher.permute(x, out, layout)
        b = layout.bounds
        # Every chunk's dispatch is started first; chunk i's experts run, then its combine is started.
        arriving = [self.dispatcher.dispatch(send[b[c]:b[c + 1]], d) for c, d in enumerate(layout.chunks)]
        returning = [self.dispatcher.combine(self.experts(rows(), d.expert_counts), d)
                     for d, rows in zip(layout.chunks, arriving)]
        back = [rows() for rows in returning]
        y = self.dispatcher.unpermute(back[0] if len(back) == 1 else ops.cat(back), out, layout, T)
        aux = self.aux_coef * out.aux_loss + self.loc_coef * out.locality_loss
        if self.z_coef:
            aux = aux + self.z_coef * out.z_loss
        metrics = MoEMetrics(stats, ops.stop_gradient(out.aux_loss), ops.stop_gradient(out.locality_loss),
                             self.traffic, out.token, out.expert, kept)
        return y.reshape(shape), aux, metrics

    def _token_ranks(self, T: int) -> Tensor:
        if self.ep.distributed:
            return ops.full((T,), self.ep.ep_rank, dtype=ms.int64)
        W = self.ep.topology.world_size
        if T % W:
            raise ValueError(f"MoE layer {self.layer_id}: one process emulating {W} ranks needs a token count "
                             f"divisible by {W}, got {T}")
        return ops.repeat_interleave(ops.arange(W, dtype=ms.int64), T // W, 0)

    def _gather(self, t: Tensor) -> Tensor:
        return all_gather_rows(t, self.ep.ep) if self.ep.distributed else t

    def _check_input(self, x: Tensor, domain: Optional[Tensor]) -> None:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoE layer {self.layer_id}: expected hidden size {self.d_model}, got {x.shape[-1]} "
                             f"(input shape {tuple(x.shape)})")
        D = self.moe.domains.num_domains
        if domain is not None and D > 1:
            d = domain.asnumpy()
            if d.size and (d.min() < 0 or d.max() >= D):
                raise ValueError(f"MoE layer {self.layer_id}: domain ids must lie in [0, {D}) "
                                 f"(moe.domains.num_domains), got [{d.min()}, {d.max()}]")
        if not self.moe.check_finite:
            return
        bad = int((~ops.isfinite(x)).sum().asnumpy())
        if bad:
            raise NonFiniteError(f"MoE layer {self.layer_id} on rank {self.ep.ep_rank}: the input "
                                 f"activations hold {bad} non-finite values (NaN/Inf)")
