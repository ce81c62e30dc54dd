"""The reference router: scores → probabilities → choices → losses → capacity → dispatch plan.

This is the truth every backend is tested against. It sees the whole expert-parallel group at once: ``x``
holds every rank's tokens, rank 0's first, and ``token_rank`` says where each token lives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from locmoe.config.schema import MoEConfig
from locmoe.routing import capacity as cap
from locmoe.routing.baselines import expert_choice, hash_route, hash_table
from locmoe.routing.dispatch_plan import DispatchPlan, build_dispatch_plan
from locmoe.routing.domains import allowed_experts, domain_expert_groups
from locmoe.routing.gating import dense_gate_scores, grap_scores, log_softmax, masked_logits
from locmoe.routing.losses import load_balance_loss, locality_loss
from locmoe.routing.selection import intra_node_first
from locmoe.routing.topk import combine_weights, top_k
from locmoe.topology import ExpertPlacement


@dataclass
class RouterState:
    """What a router carries from step to step: the moving average of its experts' cone angles."""
    angle_ema: Optional[np.ndarray] = None


@dataclass
class RoutingResult:
    plan: DispatchPlan
    probs: Optional[np.ndarray]         # [T, E]; None for the hash router
    aux_loss: float                     # load balance, mean over source ranks
    locality_loss: float
    capacity: np.ndarray                # [E]
    capacity_bound: Optional[int]       # C_min of the angular rule (mode bound), else None
    state: RouterState


def local_expert_mask(placement: ExpertPlacement, token_rank: np.ndarray,
                      allowed: Optional[np.ndarray]) -> np.ndarray:
    """[T, E] True where expert e lives on token t's node (and is allowed for it)."""
    mask = placement.node_mask()[placement.topology.node_of(token_rank)]
    return mask if allowed is None else mask & allowed


def gate_space(moe: MoEConfig, x: np.ndarray, gate_weight: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(token vectors [T, n], gate directions [n, E]) in which the capacity bound measures angles."""
    if moe.router.gate == "grap":
        return grap_scores(x, moe.num_experts), np.eye(moe.num_experts)
    return x, gate_weight


def route(x: np.ndarray, moe: MoEConfig, placement: ExpertPlacement, token_rank: np.ndarray, *,
          gate_weight: Optional[np.ndarray] = None, token_ids: Optional[np.ndarray] = None,
          domain: Optional[np.ndarray] = None, vocab_size: int = 256,
          state: Optional[RouterState] = None) -> RoutingResult:
    """Route one MoE layer's tokens.

    Args:
        x: [T, d] hidden states of the whole EP group, rank-major.
        token_rank: [T] source rank of each token (equal counts per rank).
        gate_weight: [d, E] learned gate (gate ``dense``).
        token_ids: [T] vocabulary ids (hash router).
        domain: [T] domain ids (Random Routed Experts); None = domain 0.
        state: the router's state from the previous step.
    """
    r, E, T = moe.router, moe.num_experts, x.shape[0]
    k = r.top_k
    domain = np.zeros(T, dtype=np.int64) if domain is None else np.asarray(domain)
    groups = domain_expert_groups(moe.domains.num_domains, E, moe.domains.seed)
    allowed = allowed_experts(domain, groups, E) if moe.domains.num_domains > 1 else None
    local = local_expert_mask(placement, token_rank, allowed)
    probs = log_probs = None
    if r.kind == "hash":
        table = hash_table(vocab_size, E // moe.domains.num_domains, r.hash_seed)
        idx = hash_route(token_ids, table, groups, domain)
        token, expert = np.arange(T), idx[:, 0]
        weight = prob = np.ones(T, dtype=x.dtype)
    else:
        scores = grap_scores(x, E) if r.gate == "grap" else dense_gate_scores(x, gate_weight)
        log_probs = log_softmax(masked_logits(scores, r.temperature, allowed))
        probs = np.exp(log_probs)
        if r.kind == "expert_choice":
            token, expert = expert_choice(probs, cap.factor_capacity(moe.capacity.factor, k, T, E))
            prob = weight = probs[token, expert]
        else:
            rho = r.rho if r.kind == "locmoe" else 1.0
            idx = intra_node_first(probs, k, local, rho) if r.kind == "locmoe" else top_k(probs, k)[0]
            chosen = np.take_along_axis(probs, idx, axis=-1)
            token, expert = np.repeat(np.arange(T), k), idx.reshape(-1)
            prob, weight = chosen.reshape(-1), combine_weights(chosen).reshape(-1)
    capacity, bound, state = expert_capacities(moe, x, gate_weight, token, expert, T, state)
    plan = build_dispatch_plan(token, expert, weight, prob, token_rank, placement, capacity, T)
    aux = loc = 0.0
    if probs is not None and r.kind != "expert_choice":
        aux = float(np.mean([load_balance_loss(probs[token_rank == q], idx[token_rank == q], E)
                             for q in np.unique(token_rank)]))
        loc = locality_loss(log_probs, local)
    return RoutingResult(plan, probs, aux, loc, capacity, bound, state)


def expert_capacities(moe: MoEConfig, x: np.ndarray, gate_weight: Optional[np.ndarray], token: np.ndarray,
                      expert: np.ndarray, T: int, state: Optional[RouterState]
                      ) -> tuple[np.ndarray, Optional[int], RouterState]:
    """[E] capacities for this step, the angular bound C_min (mode bound) and the updated router state."""
    c, E, k = moe.capacity, moe.num_experts, moe.router.top_k
    state = state or RouterState()
    if moe.router.kind == "expert_choice" or c.mode == "dropless":
        return np.full(E, k * T if c.mode == "dropless" else len(token), dtype=np.int64), None, state
    if c.mode == "factor":
        return np.full(E, cap.factor_capacity(c.factor, k, T, E), dtype=np.int64), None, state
    vectors, directions = gate_space(moe, x, gate_weight)
    angles = cap.gate_angles(vectors, directions)                     # [T, E]
    quantile = 1.0 if c.bound_rule == "cone" else c.angle_quantile
    delta, seen = cap.expert_angles(angles[token, expert], expert, E, quantile)
    ema = cap.update_angle_ema(state.angle_ema, delta, seen, c.angle_momentum)
    floor = cap.factor_capacity(c.min_factor, k, T, E) if c.min_factor > 0 else 1
    if c.bound_rule == "cone":
        bound = cap.capacity_lower_bound(ema, directions.shape[0], k, T)
        capacity = np.full(E, bound, dtype=np.int64)
    else:
        capacity = cap.per_expert_bound(cap.empirical_cone_shares(angles, ema), k, T, c.slack)
        bound = int(capacity.max())
    return np.maximum(capacity, floor), bound, RouterState(ema)
