"""MindSpore mirrors of the issue-14 router options (``locmoe.routing``: gating, balancing, node_limited, losses,
paper_bound): softmax or sigmoid scoring, the loss-free selection bias, node-limited top-k,
the router z-loss, the batch locality loss and the paper bound's token-space deviation.

Tie rules as in ``routing_ops``: explicit (``stable_argsort``), never left to an unstable sort. Losses run in
float64 off Ascend, for the reason ``routing_ops.log_softmax`` gives (MindSpore's CPU float32 exp/log).
"""

from __future__ import annotations

from typing import cast

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from backends.mindspore import routing_ops as rops
from backends.mindspore.routing_ops import _on_ascend, log_softmax, stable_argsort, top_k


def _wide(t: Tensor) -> Tensor:
    return t if _on_ascend() else t.astype(ms.float64)


def affinities(scoring: str, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(affinity the router selects and weighs by, p_t of the losses, log p_t), as the reference's."""
    if scoring == "sigmoid":
        return sigmoid_affinities(logits)
    log_probs64 = log_softmax(logits)  # float64 off Ascend (see routing_ops.log_softmax)
    probs = ops.exp(log_probs64).astype(ms.float32)
    return probs, probs, log_probs64.astype(ms.float32)


def sigmoid_affinities(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(σ(z) [T, E], its normalisation over experts p_t, log p_t) for sigmoid scoring (DeepSeek-V3)."""
    aff = ops.sigmoid(_wide(logits))
    probs = aff / aff.sum(axis=-1, keepdims=True)
    return aff.astype(ms.float32), probs.astype(ms.float32), ops.log(probs).astype(ms.float32)


def selection_scores(affinity: Tensor, bias, allowed) -> Tensor:
    """affinity + b, -inf where a token may not use the expert (``allowed`` None = every expert)."""
    sel = affinity if bias is None else affinity + bias
    return sel if allowed is None else ops.where(allowed, sel, ops.full_like(sel, float("-inf")))


def node_scores(sel: Tensor, table: np.ndarray, how: str) -> Tensor:
    """[T, N] node scores from the selection scores [T, E]: max, or the sum of the two best finite ones."""
    T = sel.shape[0]
    N, per = table.shape
    per_node = ops.gather(sel, Tensor(table.reshape(-1)), 1).reshape(T, N, per)
    if how == "max":
        return ops.amax(per_node, -1)
    best = ops.sort(per_node, axis=-1, descending=True)[0]  # values only: tie order does not matter
    first = best[..., 0]
    neg_inf = ops.full_like(first, float("-inf"))
    second = best[..., 1] if per > 1 else neg_inf
    return ops.where(
        ops.isfinite(first), first + ops.where(ops.isfinite(second), second, ops.zeros_like(second)), neg_inf
    )


def node_limited_top_k(sel: Tensor, k: int, num_nodes: int, table: np.ndarray, how: str) -> Tensor:
    """[T, k] top-k among the experts on each token's ``num_nodes`` best nodes (ties: lower node, lower id)."""
    N, per = table.shape
    nodes = stable_argsort(node_scores(sel, table, how), -1, descending=True)[:, :num_nodes]  # [T, M]
    keep_node = (nodes[:, :, None] == rops.arange(N)[None, None, :]).any(axis=1)  # [T, N]
    node_of = np.zeros(sel.shape[1], dtype=np.int64)
    node_of[table.reshape(-1)] = np.repeat(np.arange(N), per)
    keep = ops.gather(keep_node, Tensor(node_of), 1)  # [T, E]
    return top_k(ops.where(keep, sel, ops.full_like(sel, float("-inf"))), k)


def update_selection_bias(bias: np.ndarray, load: np.ndarray, rate: float) -> np.ndarray:
    """b + γ·sign(mean(load) − load) in the bias's float32 (the load is a host array here)."""
    load = np.asarray(load, dtype=np.float64)
    return (bias + np.float32(rate) * np.sign(load.mean() - load).astype(np.float32)).astype(np.float32)


def router_z_loss(logits: Tensor) -> Tensor:
    """(1/T) Σ_t logsumexp(z_t)² over the finite logits (ST-MoE), differentiable."""
    z = _wide(logits)
    m = cast(Tensor, ops.stop_gradient(ops.amax(z, -1, keepdims=True)))  # typed Optional
    lse = m[:, 0] + ops.log(ops.exp(z - m).sum(axis=-1))
    return (lse * lse).mean()


def batch_locality_loss(probs: Tensor, local: Tensor, allowed, ranks: int, smoothing: float) -> Tensor:
    """KL(D_c ‖ D_l^ε) per source rank (``ranks`` equal blocks of tokens), averaged (LocMoE Eq. 6):
    ``locmoe.routing.losses.batch_locality_loss``. Differentiable through P."""
    p = _wide(probs)
    T, E = p.shape
    allow = ops.ones((T, E), ms.bool_) if allowed is None else allowed
    target = ops.where(local.any(axis=-1, keep_dims=True), local, allow).astype(p.dtype)
    q = target / target.sum(axis=-1, keepdims=True)
    u = allow.astype(p.dtype) / allow.astype(p.dtype).sum(axis=-1, keepdims=True)
    d_c = p.reshape(ranks, T // ranks, E).mean(axis=1)
    # the weights as tensors of p's dtype: a Python float would enter as float32 (0.99 → 0.9900000095)
    keep, mix = Tensor(1.0 - smoothing, p.dtype), Tensor(smoothing, p.dtype)
    d_l = keep * q.reshape(ranks, T // ranks, E).mean(axis=1) + mix * u.reshape(ranks, T // ranks, E).mean(axis=1)
    pos = d_c > 0
    one = ops.ones_like(d_c)
    terms = d_c * (ops.log(ops.where(pos, d_c, one)) - ops.log(ops.where(pos, d_l, one)))
    return ops.where(pos, terms, ops.zeros_like(terms)).sum(axis=-1).mean()


def cosine_deviation(x: Tensor, columns: Tensor) -> Tensor:
    """[T, E] float64 1 − cos(x_t, w_e) in the token space; a zero vector counts as orthogonal (1)."""
    x = cast(Tensor, ops.stop_gradient(x)).astype(ms.float64)  # stop_gradient and norm: typed Optional
    w = cast(Tensor, ops.stop_gradient(columns)).astype(ms.float64)
    dot = ops.matmul(x, w)
    norms = cast(Tensor, ops.norm(x, dim=-1))[:, None] * cast(Tensor, ops.norm(w, dim=0))[None, :]
    cos = ops.where(norms > 0, dot / ops.where(norms > 0, norms, ops.ones_like(norms)), ops.zeros_like(dot))
    return 1.0 - ops.clamp(cos, -1.0, 1.0)
