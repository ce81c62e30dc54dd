"""The reference router: scores → probabilities → choices → losses → capacity → dispatch plan.

This is the truth every backend is tested against. It sees the whole expert-parallel group at once: ``x``
holds every rank's tokens, rank 0's first, and ``token_rank`` says where each token lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from locmoe.config.schema import MoEConfig
from locmoe.parallel.topology import ExpertPlacement
from locmoe.routing import capacity as cap
from locmoe.routing import paper_bound
from locmoe.routing.balancing import selection_scores, update_selection_bias
from locmoe.routing.baselines import expert_choice, hash_route, hash_table
from locmoe.routing.dispatch_plan import DispatchPlan, build_dispatch_plan
from locmoe.routing.domains import allowed_experts, domain_expert_groups
from locmoe.routing.forced import forced_experts, rank_positions
from locmoe.routing.gating import (
    dense_gate_scores,
    grap_gate_matrix,
    grap_scores,
    log_softmax,
    masked_logits,
    paper_gate,
    sigmoid,
)
from locmoe.routing.losses import batch_locality_loss, load_balance_loss, locality_loss, router_z_loss
from locmoe.routing.node_limited import check_node_limit, node_expert_table, node_limited_top_k
from locmoe.routing.selection import intra_node_first
from locmoe.routing.topk import combine_weights, top_k


@dataclass
class RouterState:
    """What a router carries from step to step: the per-expert angle averages of the capacity bound (NaN for
    an expert not seen yet; the ``paper`` rule keeps its δ here) and the loss-free balancing's selection bias."""

    angle_ema: Optional[np.ndarray] = None
    selection_bias: Optional[np.ndarray] = None


@dataclass(kw_only=True)
class RoutingResult:
    plan: DispatchPlan
    probs: Optional[np.ndarray]  # [T, E]; None for the hash router (sigmoid scoring: normalised)
    aux_loss: float  # load balance, mean over source ranks
    locality_loss: float
    capacity: np.ndarray  # [E]
    capacity_bound: Optional[int]  # C_min of the angular rule (mode bound), else None
    state: RouterState
    z_loss: float = 0.0  # router z-loss (0 for the hash router)


def local_expert_mask(placement: ExpertPlacement, token_rank: np.ndarray, allowed: Optional[np.ndarray]) -> np.ndarray:
    """[T, E] True where expert e lives on token t's node (and is allowed for it)."""
    mask = placement.node_mask()[placement.topology.node_of(token_rank)]
    return mask if allowed is None else mask & allowed


def gate_space(moe: MoEConfig, x: np.ndarray, gate_weight: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(token vectors [T, n], gate directions [n, E]) in which the capacity bound measures angles."""
    if moe.router.gate == "grap":
        return grap_scores(x, moe.num_experts), np.eye(moe.num_experts)
    assert gate_weight is not None, "a learned gate's angles need its gate_weight"
    return x, gate_weight


def affinities(logits: np.ndarray, scoring: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(affinity the router selects and weighs by, probabilities p_t of the losses, log p_t), each [T, E].

    softmax: all three from the softmax. sigmoid (DeepSeek-V3): the affinity is σ(z) per expert; the losses
    see it normalised over the experts, p_t = σ(z_t) / Σ_e σ(z_{t,e})."""
    if scoring == "softmax":
        log_probs = log_softmax(logits)
        probs = np.exp(log_probs)
        return probs, probs, log_probs
    aff = sigmoid(logits)
    probs = aff / aff.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return aff, probs, np.log(probs)


def choose(
    moe: MoEConfig,
    placement: ExpertPlacement,
    affinity: np.ndarray,
    probs: np.ndarray,
    local: np.ndarray,
    allowed: Optional[np.ndarray],
    bias: Optional[np.ndarray],
    groups: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(idx [T, k] the chosen experts, best first; the choices the load-balance loss counts)."""
    r, k = moe.router, moe.router.top_k
    assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    if r.kind == "locmoe":
        idx = intra_node_first(probs, k, local, r.rho)
        return idx, (top_k(probs, k)[0] if r.balance_counts == "gate" else idx)
    sel = affinity if bias is None and r.node_limit == 0 else selection_scores(affinity, bias, allowed)
    if r.node_limit:
        table = node_expert_table(placement)
        check_node_limit(table, groups, r.node_limit, k)
        idx = node_limited_top_k(sel, k, r.node_limit, table, r.node_score)
    else:
        idx = top_k(sel, k)[0]
    return idx, idx


def route(
    x: np.ndarray,
    moe: MoEConfig,
    placement: ExpertPlacement,
    token_rank: np.ndarray,
    *,
    gate_weight: Optional[np.ndarray] = None,
    gate_bias: Optional[np.ndarray] = None,
    token_ids: Optional[np.ndarray] = None,
    domain: Optional[np.ndarray] = None,
    vocab_size: int = 256,
    state: Optional[RouterState] = None,
) -> RoutingResult:
    """Route one MoE layer's tokens.

    Args:
        x: [T, d] hidden states of the whole EP group, rank-major.
        token_rank: [T] source rank of each token (equal counts per rank).
        gate_weight: [d, E] learned gate (gate ``dense``); gate_bias: [E] ε (``router.gate_bias``).
        token_ids: [T] vocabulary ids (hash router).
        domain: [T] domain ids (Random Routed Experts); None = domain 0.
        state: the router's state from the previous step; the result's ``state`` is the next one.
    """
    r, E, T = moe.router, moe.num_experts, x.shape[0]
    k = r.top_k
    assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    state = state or RouterState()
    domain = np.zeros(T, dtype=np.int64) if domain is None else np.asarray(domain)
    groups = domain_expert_groups(moe.domains.num_domains, E, moe.domains.seed)
    allowed = allowed_experts(domain, groups, E) if moe.domains.num_domains > 1 else None
    local = local_expert_mask(placement, token_rank, allowed)
    probs = log_probs = logits = None
    bias = None
    if r.bias_update_rate > 0:
        bias = np.zeros(E) if state.selection_bias is None else state.selection_bias
    if r.kind == "hash":
        table = hash_table(vocab_size, E // moe.domains.num_domains, r.hash_seed)
        assert token_ids is not None, "the hash router routes by token id"
        idx = hash_route(token_ids, table, groups, domain)
        if moe.force_balance:
            idx = forced_experts(rank_positions(token_rank), k, E)
        token, expert = np.arange(T), idx[:, 0]
        weight = prob = np.ones(T, dtype=x.dtype)
    else:
        if r.gate == "grap":
            scores = grap_scores(x, E)
        else:
            assert gate_weight is not None, "a learned gate needs gate_weight"
            scores = dense_gate_scores(x, gate_weight)
        scores = paper_gate(scores, r.gate_activation, gate_bias if r.gate_bias else None)
        logits = masked_logits(scores, r.temperature, allowed)
        affinity, probs, log_probs = affinities(logits, r.scoring)
        if r.kind == "expert_choice":
            token, expert = expert_choice(probs, cap.factor_capacity(moe.capacity.factor, k, T, E))
            prob = weight = probs[token, expert]
        else:
            idx, counted = choose(moe, placement, affinity, probs, local, allowed, bias, groups)
            if moe.force_balance:  # the scores and losses as usual, the choice replaced (a benchmark's)
                gate_counts = r.kind == "locmoe" and r.balance_counts == "gate"
                idx = forced_experts(rank_positions(token_rank), k, E)
                counted = counted if gate_counts else idx
            chosen = np.take_along_axis(affinity, idx, axis=-1)
            token, expert = np.repeat(np.arange(T), k), idx.reshape(-1)
            prob, weight = chosen.reshape(-1), combine_weights(chosen).reshape(-1)
    capacity, bound, angle_ema = expert_capacities(moe, x, gate_weight, token, expert, T, state)
    plan = build_dispatch_plan(token, expert, weight, prob, token_rank, placement, capacity, T)
    aux = loc = 0.0
    if probs is not None and log_probs is not None and r.kind != "expert_choice":
        aux = float(
            np.mean(
                [load_balance_loss(probs[token_rank == q], counted[token_rank == q], E) for q in np.unique(token_rank)]
            )
        )
        loc = (
            locality_loss(log_probs, local)
            if r.locality_loss == "token"
            else batch_locality_loss(probs, local, allowed, token_rank, r.locality_smoothing)
        )
    if bias is not None:
        bias = update_selection_bias(bias, plan.expert_load(), r.bias_update_rate)
    z = router_z_loss(logits) if logits is not None else 0.0
    return RoutingResult(
        plan=plan,
        probs=probs,
        aux_loss=aux,
        locality_loss=loc,
        capacity=capacity,
        capacity_bound=bound,
        state=RouterState(angle_ema, bias),
        z_loss=z,
    )


def expert_capacities(
    moe: MoEConfig,
    x: np.ndarray,
    gate_weight: Optional[np.ndarray],
    token: np.ndarray,
    expert: np.ndarray,
    T: int,
    state: RouterState,
) -> tuple[np.ndarray, Optional[int], Optional[np.ndarray]]:
    """[E] capacities for this step, the angular bound C_min (mode bound) and the next angle state."""
    c, E, k = moe.capacity, moe.num_experts, moe.router.top_k
    assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    if moe.router.kind == "expert_choice" or c.mode == "dropless":
        return np.full(E, k * T if c.mode == "dropless" else len(token), dtype=np.int64), None, state.angle_ema
    factor = cap.factor_capacity(c.factor, k, T, E)
    if c.mode == "factor":
        return np.full(E, factor, dtype=np.int64), None, state.angle_ema
    floor = cap.factor_capacity(c.min_factor, k, T, E) if c.min_factor > 0 else 1
    if c.bound_rule == "paper":
        return paper_rule(moe, x, gate_weight, token, expert, T, state, floor, factor)
    vectors, directions = gate_space(moe, x, gate_weight)
    angles = cap.gate_angles(vectors, directions)  # [T, E]
    quantile = 1.0 if c.bound_rule == "cone" else c.angle_quantile
    delta, seen = cap.expert_angles(angles[token, expert], expert, E, quantile)
    ema = cap.update_angle_ema(state.angle_ema, delta, seen, c.angle_momentum)
    if c.bound_rule == "cone":
        bound = cap.capacity_lower_bound(ema, directions.shape[0], k, T)
        capacity = np.full(E, bound, dtype=np.int64)
    else:
        capacity = cap.per_expert_bound(cap.empirical_cone_shares(angles, ema), k, T, c.slack)
        bound = int(capacity.max())
    capacity = cap.unseen_fallback(capacity, ema, factor)
    return np.maximum(capacity, floor), bound, ema


def paper_rule(
    moe: MoEConfig,
    x: np.ndarray,
    gate_weight: Optional[np.ndarray],
    token: np.ndarray,
    expert: np.ndarray,
    T: int,
    state: RouterState,
    floor: int,
    factor: int,
):
    """LocMoE Theorem 1 (``locmoe.routing.paper_bound``): one capacity for every expert from δ_max, the
    largest cosine distance of a routed copy to its expert's gate vector in the d-dim token space."""
    c, E, k, d = moe.capacity, moe.num_experts, moe.router.top_k, x.shape[1]
    assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    if c.paper_delta > 0:  # a fixed δ: nothing measured, the state stays as it is
        bound = paper_bound.paper_capacity(c.paper_delta, d, E, k, T, c.paper_form)
        return np.full(E, max(bound, floor), dtype=np.int64), bound, state.angle_ema
    columns = grap_gate_matrix(d, E) if moe.router.gate == "grap" else gate_weight
    assert columns is not None, "a learned gate's deviation needs its gate_weight"
    deviation = paper_bound.cosine_deviation(x, columns)[token, expert]
    delta, seen = cap.expert_angles(deviation, expert, E, 1.0)
    delta_state = paper_bound.update_paper_delta(state.angle_ema, delta, seen, c.paper_schedule, c.angle_momentum)
    if np.isnan(delta_state).all():
        return np.full(E, max(factor, floor), dtype=np.int64), None, delta_state
    bound = paper_bound.paper_capacity(np.nanmax(delta_state), d, E, k, T, c.paper_form)
    return np.full(E, max(bound, floor), dtype=np.int64), bound, delta_state
