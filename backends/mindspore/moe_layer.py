"""The MoE layer's MindSpore shell: router, experts and dispatcher as cells (the same parameter names as the
torch backend: ``router.gate_weight`` for a learned gate, ``experts.w1/w2/w3``); one call is
``locmoe.moe.layer.moe_forward`` over ``backends.mindspore.moe_ops``.

In PyNative the dynamic dispatch reads split sizes on the host and the bound's capacity kernels run the numpy
reference's functions; with ``moe.dispatch_shape: static`` and a factor capacity nothing in the layer reads the
device, so ``parallel.jit_step`` compiles it with the rest of the step (``backends.mindspore.train_step``).
The collectives run synchronously on CPU (``collectives.all_to_all_start``),
so ``moe.overlap_chunks`` gives the same results and byte counts there, without overlap.
"""

from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import Tensor, nn, ops

from backends.mindspore.experts import GroupedExperts
from backends.mindspore.moe_ops import MindSporeOps
from backends.mindspore.router import Router
from locmoe.config.schema import MoEConfig
from locmoe.moe.layer import moe_forward
from locmoe.moe.parts import build_moe_parts
from locmoe.moe.records import MoEMetrics
from locmoe.moe.routing import node_preference
from locmoe.parallel.context import ExpertParallel
from locmoe.training.finite import NonFiniteError


class MoELayer(nn.Cell):
    def __init__(
        self, moe: MoEConfig, d_model: int, vocab_size: int, ep: ExpertParallel, layer_id: int = 0, compute_dtype=None
    ):
        """``compute_dtype``: the experts' dtype (bfloat16 activations: the router runs in float32 and the experts
        in bfloat16, as torch's autocast does)."""
        super().__init__()
        self.layer_id, self.d_model, self.ep, self.moe = layer_id, d_model, ep, moe
        self.ops = MindSporeOps(compute_dtype or ms.float32)
        parts = build_moe_parts(moe, self.ops, ep, d_model, vocab_size, Router, GroupedExperts)
        self.router, self.experts = parts.router, parts.experts
        self.traffic, self.dispatcher = parts.traffic, parts.dispatcher
        self.defer_checks, self.nonfinite = False, None  # set by backends.mindspore.train_step

    def construct(
        self, x: Tensor, token_ids: Optional[Tensor] = None, domain: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor, MoEMetrics]:
        """x: [..., d] -> (y [..., d], auxiliary objective α·L_aux + μ·L_loc, metrics).

        token_ids, domain: [...] per token (hash router; Random Routed Experts). In one process emulating W
        ranks, the tokens are W equal blocks, rank 0's first.
        """
        if x.dtype == ms.float32:
            return moe_forward(self.ops, self, x, token_ids, domain, self.training)
        y, aux, metrics = moe_forward(self.ops, self, x.astype(ms.float32), token_ids, domain, self.training)
        return y.astype(x.dtype), aux, metrics

    def node_preference(self, x: Tensor, domain: Optional[Tensor] = None) -> Tensor:
        """x: [..., d] -> [..., N] each token's gate probability on each node (sequence placement's signal)."""
        flat = None if domain is None else domain.reshape(-1)
        pref = node_preference(self.ops, self.router, x.astype(ms.float32).reshape(-1, x.shape[-1]), flat)
        return pref.reshape(*x.shape[:-1], -1)

    def count_nonfinite(self, x: Tensor) -> None:
        """``moe.check_finite``: NaN/Inf in the input activations, read at once; inside a compiled step
        (``defer_checks``) the count is kept in ``nonfinite`` for the step to return and check."""
        count = (~ops.isfinite(x)).sum()
        if self.defer_checks:
            self.nonfinite = count
            return
        self.raise_if_nonfinite(int(count.asnumpy()))

    def raise_if_nonfinite(self, bad: int) -> None:
        if bad:
            raise NonFiniteError(
                f"MoE layer {self.layer_id} on rank {self.ep.rank}: the input "
                f"activations hold {bad} non-finite values (NaN/Inf)"
            )
