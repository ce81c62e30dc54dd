"""Torch mirrors of the issue-14 router options (``locmoe.routing``: gating, balancing, node_limited, losses,
paper_bound, the unseen-expert fallback of capacity): each a small function of the same name as its numpy twin,
tested against it in ``tests/backends/torch/test_routing_ops.py``.

NOTE: host syncs — none. Every function has fixed output shapes and reads nothing back to the host: the
loss-free bias moves in place on the device, the paper bound's incomplete beta is a fixed-length float64 sum
on the device (:func:`belong_probability`), the fallbacks are ``torch.where``.

The shared control flow (``locmoe.moe``) reaches them through ``backends.torch.moe_ops``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch

from backends.torch import routing_ops as ops
from locmoe.routing.gating import grap_gate_matrix
from locmoe.routing.node_limited import check_node_limit, node_expert_table


# ----------------------------------------------------------------------------- set-up
def init_options(router: torch.nn.Module, moe, d_model: int, placement, groups: np.ndarray) -> None:
    """Register the options' parameter and buffers on the router: ε (``gate_bias``, learned, init 0), the
    loss-free ``selection_bias`` (state, checkpointed), the node table of node-limited routing and the GrAP
    columns of the paper bound (constants)."""
    r, E = moe.router, moe.num_experts
    router.router_cfg = r
    # None: no ε (Module.__setattr__ takes None, though it types Tensor | Module)
    gate_bias = torch.nn.Parameter(torch.zeros(E)) if r.gate_bias and r.kind != "hash" else None
    router.gate_bias = gate_bias  # pyright: ignore[reportArgumentType]
    router.register_buffer("selection_bias", torch.zeros(E) if r.bias_update_rate > 0 else None)
    table = node_expert_table(placement)
    if r.node_limit:
        check_node_limit(table, groups, r.node_limit, r.top_k)
    router.register_buffer("node_table", torch.from_numpy(table), persistent=False)
    node_of = np.zeros(E, dtype=np.int64)
    node_of[table.reshape(-1)] = np.repeat(np.arange(table.shape[0]), table.shape[1])
    router.register_buffer("node_of_expert", torch.from_numpy(node_of), persistent=False)
    paper = moe.capacity.mode == "bound" and moe.capacity.bound_rule == "paper" and r.gate == "grap"
    router.register_buffer(
        "grap_columns", torch.from_numpy(grap_gate_matrix(d_model, E)) if paper else None, persistent=False
    )


# ----------------------------------------------------------------------------- scores and choices
def affinities(scoring: str, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(affinity the router selects and weighs by, p_t of the losses, log p_t), each [T, E] float32."""
    if scoring == "softmax":
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        probs = log_probs.exp()
        return probs, probs, log_probs
    aff = torch.sigmoid(logits.float())
    probs = aff / aff.sum(dim=-1, keepdim=True)
    return aff, probs, probs.log()


def selection_scores(
    affinity: torch.Tensor, bias: Optional[torch.Tensor], allowed: Optional[torch.Tensor]
) -> torch.Tensor:
    """affinity + b, -inf where a token may not use the expert."""
    sel = affinity if bias is None else affinity + bias
    return sel if allowed is None else sel.masked_fill(~allowed, float("-inf"))


def node_scores(sel: torch.Tensor, table: torch.Tensor, how: str) -> torch.Tensor:
    """[T, N] node scores: the best selection score on the node (max), or the sum of its two best finite."""
    per = sel[:, table]  # [T, N, E/N]
    if how == "max":
        return per.amax(dim=-1)
    best = torch.sort(per, dim=-1, descending=True).values
    first = best[..., 0]
    second = best[..., 1] if best.shape[-1] > 1 else torch.full_like(first, float("-inf"))
    total = first + torch.where(torch.isfinite(second), second, torch.zeros_like(second))
    return torch.where(torch.isfinite(first), total, torch.full_like(first, float("-inf")))


def node_limited_top_k(
    sel: torch.Tensor, k: int, num_nodes: int, table: torch.Tensor, node_of: torch.Tensor, how: str
) -> torch.Tensor:
    """[T, k] top-k among the experts on each token's ``num_nodes`` best nodes (ties: lower node, lower id)."""
    nodes = ops.top_k(node_scores(sel, table, how), num_nodes)  # [T, M]
    keep = torch.zeros(sel.shape[0], table.shape[0], dtype=torch.bool, device=sel.device).scatter_(1, nodes, True)
    return ops.top_k(sel.masked_fill(~keep[:, node_of], float("-inf")), k)


def update_selection_bias_(router, load: torch.Tensor) -> None:
    """Loss-free balancing, after a training call: b += γ·sign(mean(load) − load), in place on the device.
    ``load`` [E]: the group's copies per expert before capacity."""
    if router.selection_bias is None or not router.training:
        return
    load = load.to(torch.float64)
    step = router.router_cfg.bias_update_rate * torch.sign(load.mean() - load)
    router.selection_bias.add_(step.to(router.selection_bias.dtype))


# ----------------------------------------------------------------------------- losses
def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """(1/T) Σ_t logsumexp(z_t)² over the finite logits (ST-MoE)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def batch_locality_loss(
    probs: torch.Tensor, local: torch.Tensor, allowed: Optional[torch.Tensor], ranks: int, smoothing: float
) -> torch.Tensor:
    """KL(D_c ‖ D_l^ε) per source rank (``ranks`` equal blocks), averaged (LocMoE Eq. 6), differentiable
    through P: ``locmoe.routing.losses.batch_locality_loss``."""
    T, E = probs.shape
    allow = torch.ones_like(local) if allowed is None else allowed
    target = torch.where(local.any(dim=-1, keepdim=True), local, allow).to(probs.dtype)
    q = target / target.sum(dim=-1, keepdim=True)
    u = allow.to(probs.dtype) / allow.to(probs.dtype).sum(dim=-1, keepdim=True)
    d_c = probs.view(ranks, T // ranks, E).mean(dim=1)
    d_l = (1.0 - smoothing) * q.view(ranks, T // ranks, E).mean(dim=1) + smoothing * u.view(ranks, T // ranks, E).mean(
        dim=1
    )
    pos = d_c > 0
    one = torch.ones_like(d_c)
    terms = d_c * (torch.where(pos, d_c, one).log() - torch.where(pos, d_l, one).log())
    return torch.where(pos, terms, torch.zeros_like(terms)).sum(dim=-1).mean()


# ----------------------------------------------------------------------------- capacity
def cosine_deviation(x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """[T, E] float64 1 − cos(x_t, w_e) in the token space; a zero vector counts as orthogonal (1)."""
    with torch.no_grad():
        x, w = x.double(), columns.double()
        dot = x @ w
        norms = x.norm(dim=-1, keepdim=True) * w.norm(dim=0, keepdim=True)
        cos = torch.where(norms > 0, dot / norms.clamp(min=torch.finfo(dot.dtype).tiny), torch.zeros_like(dot))
        return 1.0 - cos.clamp(-1.0, 1.0)


def update_paper_delta(
    state: torch.Tensor, delta: torch.Tensor, seen: torch.Tensor, schedule: str, momentum: float
) -> torch.Tensor:
    """The paper rule's δ state (``locmoe.routing.paper_bound.update_paper_delta``), decided on the device."""
    if schedule == "ema":
        return ops.update_angle_ema(state, delta, seen, momentum)
    first = torch.where(seen, delta, torch.full_like(delta, float("-inf"))).amax()
    fill = torch.isnan(state).all() & seen.any()
    return torch.where(fill, first.expand_as(state), state)


@functools.cache
def _wallis_terms(d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(j, log(j·W_j)) for j = m0+2, m0+4, ..., d−2 (m0 = d mod 2), W_j = ∫_0^{π/2} sin^j: constants per d."""
    m = d - 2
    j = torch.arange(m % 2 + 2, max(m + 1, m % 2 + 2), 2, dtype=torch.float64, device=device)  # empty for d < 4
    log_w = 0.5 * math.log(math.pi) - math.log(2.0) + torch.lgamma((j + 1) / 2) - torch.lgamma(j / 2 + 1)
    return j, torch.log(j) + log_w


def belong_probability(delta: torch.Tensor, d: int) -> torch.Tensor:
    """p_δ = 1 − I_{δ²}(½, (d−1)/2) on the device (torch has no incomplete beta), float64 0-d.

    The identity used: with θ0 = acos δ and S_m = ∫_0^{θ0} sin^m / ∫_0^{π/2} sin^m (m = d − 2), the reduction
    ∫sin^m = −sin^{m−1}cos/m + (m−1)/m ∫sin^{m−2} gives S_m = S_{m−2} − δ·(1−δ²)^{(m−1)/2} / (m·W_m), from
    S_0 = θ0/(π/2) or S_1 = 1 − δ: a sum of d/2 terms, no loop (agrees with scipy to ~5e-12 relative where
    p > 1e-3, which is all the bound needs: p ≤ 1/n saturates it)."""
    delta = delta.double().clamp(0.0, 1.0)
    base = torch.arccos(delta) / (math.pi / 2) if d % 2 == 0 else 1.0 - delta
    j, log_jw = _wallis_terms(d, delta.device)
    if j.numel() == 0:
        return base
    terms = torch.exp((j - 1) / 2 * torch.log1p(-delta * delta) - log_jw)
    return (base - delta * terms.sum()).clamp(min=0.0)


def paper_capacity(delta: torch.Tensor, d: int, n: int, k: int, num_tokens: int, form: str) -> torch.Tensor:
    """0-d int64 ⌈ec_min·k·T⌉ clipped to [1, k·T] (``locmoe.routing.paper_bound.paper_capacity``)."""
    delta = delta.double().clamp(0.0, 1.0)
    full = k * num_tokens
    if form == "exp":
        ec = torch.exp((d * delta * delta / (2.0 - delta * delta)).clamp(max=700.0)) / n
    else:
        ec = 1.0 / (n * belong_probability(delta, d).clamp(min=1e-300))
    c = torch.ceil(ec * full - 1e-9).clamp(1, full)
    return torch.where(ec >= 1.0, torch.full_like(c, full), c).long()
