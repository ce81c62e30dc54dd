"""The MoE layer's torch shell: router, experts and dispatcher as modules; one call is
``locmoe.moe.layer.moe_forward`` (route → permute → all-to-all → grouped-GEMM experts → all-to-all back →
weighted combine) over ``backends.torch.moe_ops``.

On CUDA the all-to-alls run on NCCL's own stream, so with ``moe.overlap_chunks > 1`` one chunk's expert
compute overlaps the next chunk's exchange.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import nn

from backends.torch.experts import GroupedExperts
from backends.torch.moe_ops import TorchOps
from backends.torch.router import Router
from locmoe.config.schema import MoEConfig
from locmoe.moe.layer import moe_forward
from locmoe.moe.parts import build_moe_parts
from locmoe.moe.records import MoEMetrics
from locmoe.moe.routing import node_preference
from locmoe.parallel.context import ExpertParallel
from locmoe.training.finite import NonFiniteError


class MoELayer(nn.Module):
    nonfinite_inputs: torch.Tensor  # a buffer (``register_buffer``)

    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, ep: ExpertParallel, layer_id: int = 0):
        super().__init__()
        self.layer_id, self.d_model, self.ep, self.moe = layer_id, d_model, ep, moe
        self.ops = TorchOps(fuse=moe.fuse_kernels)
        experts = partial(GroupedExperts, fuse=moe.fuse_kernels)
        parts = build_moe_parts(moe, self.ops, ep, d_model, vocab_size, Router, experts)
        self.router, self.experts = parts.router, parts.experts
        self.traffic, self.dispatcher = parts.traffic, parts.dispatcher
        self.register_buffer("nonfinite_inputs", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(
        self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None, domain: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, MoEMetrics]:
        """x: [..., d] -> (y [..., d], auxiliary objective α·L_aux + μ·L_loc, metrics).

        token_ids, domain: [...] per token (hash router; Random Routed Experts). In one process emulating W
        ranks, the tokens are W equal blocks, rank 0's first.
        """
        return moe_forward(self.ops, self, x, token_ids, domain, self.training)

    def node_preference(self, x: torch.Tensor, domain: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [..., d] -> [..., N] each token's gate probability on each node (sequence placement's signal)."""
        flat = None if domain is None else domain.reshape(-1)
        pref = node_preference(self.ops, self.router, x.reshape(-1, x.shape[-1]), flat)
        return pref.reshape(*x.shape[:-1], -1)

    def count_nonfinite(self, x: torch.Tensor) -> None:
        """``moe.check_finite``: NaN/Inf in the input activations."""
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
            raise NonFiniteError(
                f"MoE layer {self.layer_id} on rank {self.ep.rank}: the input "
                f"activations hold {bad} non-finite values (NaN/Inf)"
            )
