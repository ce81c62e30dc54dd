"""One-process MoE layer for KV-cache decoding: the same router and expert weights as :class:`InferenceMoE`,
with no host synchronisation, so the one-token decode step can be captured as a CUDA graph.

Legend: T tokens, d model dim, E experts, K experts per token, C = T * K routed copies.

The choices are those of ``backends.torch.router.Router.forward`` on one device (every expert local: the
intra-node-first rule has nothing to prefer): the shared ``locmoe.moe.routing.route`` without its losses; the
serving capacity is dropless, so no copy is dropped
and a token's result never depends on the other tokens of the call. ``tests/inference/test_kv_cache.py``
checks this path against the reference (``InferenceMoE`` through the full re-computation) for every router.

NOTE: ``torch.bincount`` and boolean indexing read a size back to the host on CUDA; the per-expert counts
here are a scatter-add (``routing_ops.counts_of``), and the copies are sorted with a stable argsort.
"""

from __future__ import annotations

from typing import Optional, cast

import torch

from backends.torch import routing_ops as ops
from backends.torch.experts import GroupedExperts, grouped_mm_supported
from backends.torch.router import Router
from locmoe.inference.errors import InferenceError
from locmoe.moe.routing import route

CACHE_ROUTERS = ("locmoe", "gshard", "switch", "hash")
# router options :func:`route_tokens` computes; a router using any other (a ReLU or biased gate, sigmoid
# scoring, node limits, a selection bias) takes the reference path, ``InferenceMoE``, instead
PLAIN_ROUTER = {
    "gate_activation": "none",
    "gate_bias": False,
    "scoring": "softmax",
    "node_limit": 0,
    "bias_update_rate": 0.0,
}


def plain_router(router_cfg) -> bool:
    """Does :func:`route_tokens` reproduce this router config (``moe.router``)?"""
    return all(getattr(router_cfg, k, v) == v for k, v in PLAIN_ROUTER.items())


def check_cacheable(kind: str, capacity_mode: str) -> None:
    """A KV cache needs routing that is causal and per token: expert choice ranks a token against the other
    tokens of the batch (later ones included), and a finite capacity drops copies by batch composition."""
    if kind not in CACHE_ROUTERS:
        raise InferenceError(
            f"moe.router.kind = {kind!r} routes each token against the other tokens of the "
            "batch, so a KV cache cannot reproduce it; serve it without the cache "
            f"(--no-kv-cache). KV-cache routers: {', '.join(CACHE_ROUTERS)}"
        )
    if capacity_mode != "dropless":
        raise InferenceError(
            f"capacity {capacity_mode!r} drops copies depending on the whole batch; KV-cache "
            "decoding needs --capacity dropless (or --no-kv-cache)"
        )


def route_tokens(
    router: Router, x: torch.Tensor, token_ids: torch.Tensor, domain: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [T, d] -> (experts [T, K], combine weights [T, K] fp32): the router's own choices
    (``locmoe.moe.routing.route`` on node 0, without the losses)."""
    T = x.shape[0]
    node_mask = cast(torch.Tensor, router.node_mask)  # a buffer (``register_buffer``)
    local = node_mask[torch.zeros(T, dtype=torch.long, device=x.device)]
    out = route(router.ops, router, x, local, 1, token_ids, domain, losses=False)
    assert out.choices is not None and out.weight is not None  # token-choice routers (CACHE_ROUTERS) give both
    return out.choices, out.weight.view(T, -1)


def gathered_experts(experts: GroupedExperts, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """x: [C, d], expert [C] -> [C, d]: each copy multiplied by its own expert's weights (a batched GEMM
    over gathered weights; for dtypes grouped_mm lacks, e.g. fp32 on CUDA)."""

    def mm(a, w):
        return torch.bmm(a[:, None], w.index_select(0, expert).to(a.dtype))[:, 0]

    return experts._ffn(mm, x)


def moe_step(
    router: Router, experts: GroupedExperts, x: torch.Tensor, token_ids: torch.Tensor, domain: Optional[torch.Tensor]
) -> torch.Tensor:
    """x: [T, d] -> [T, d], the weighted sum of each token's K expert outputs (no host sync)."""
    T, d = x.shape
    idx_TK, w_TK = route_tokens(router, x, token_ids, domain)
    K = idx_TK.shape[1]
    flat_C = idx_TK.reshape(-1)
    order_C = torch.argsort(flat_C, stable=True)  # copies by expert, then token
    rows_Cd = x.index_select(0, torch.div(order_C, K, rounding_mode="floor"))
    if grouped_mm_supported(rows_Cd) and experts.impl != "loop":
        counts_E = ops.counts_of(flat_C, experts.w1.shape[0])  # not bincount: no host sync
        y_Cd = experts(rows_Cd, counts_E)  # grouped_mm: offsets on the device
    else:
        y_Cd = gathered_experts(experts, rows_Cd, flat_C.index_select(0, order_C))
    y_Cd = torch.empty_like(y_Cd).index_copy_(0, order_C, y_Cd)  # back to (token, choice) order
    return (y_Cd.view(T, K, d) * w_TK[..., None].to(y_Cd.dtype)).sum(dim=1)
