"""Expert capacity: the angular-deviation lower bound (LocMoE), the capacity-factor rule and dropless mode.

Angles are measured in the gate space: for GrAP, the pooled score vector s_t ∈ R^E against the unit basis
vector of its expert; for a learned gate, x_t ∈ R^d against the expert's gate column. Each expert e has a
cone of half-angle δ_e (the largest angle among the token copies assigned to it, or a quantile of them).
The cone covers the share A_n(δ_e) of the sphere S^{n-1}; the ``cone`` rule credits expert e with the
share σ_e = A_n(δ_e) / Σ_j A_n(δ_j) of the k·T copies and sets the bound C_min = ⌈k·T·max_e σ_e⌉.
Equal cones give exactly k·T/E. The ``quantile`` rule takes δ_e as a quantile of the angles, measures
each cone by the share of the step's tokens inside it and gives every expert its own capacity.
See docs/method.md for why these replace the naive sphere-share reading.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc


def cap_fraction(n: int, delta: np.ndarray | float) -> np.ndarray:
    """A_n(δ): the fraction of the unit sphere S^{n-1} ⊂ R^n within angle δ ∈ [0, π] of a fixed direction.

    A_n(δ) = ½ · I_{sin²δ}((n−1)/2, ½) for δ ≤ π/2, and 1 − A_n(π − δ) beyond (I = regularised
    incomplete beta). A_n(π/2) = ½, A_n(π) = 1.
    """
    if n < 2:
        raise ValueError(f"the gate space must have dimension >= 2 for a cap fraction, got {n}")
    delta = np.clip(np.asarray(delta, dtype=np.float64), 0.0, math.pi)
    narrow = np.minimum(delta, math.pi - delta)
    half = 0.5 * betainc((n - 1) / 2.0, 0.5, np.sin(narrow) ** 2)
    return np.where(delta <= math.pi / 2, half, 1.0 - half)


def gate_angles(token_vectors: np.ndarray, gate_directions: np.ndarray) -> np.ndarray:
    """Angle between every token's gate-space vector and every expert's gate direction.

    Args:
        token_vectors: [T, n] (GrAP: the scores s_t; dense gate: the hidden states x_t).
        gate_directions: [n, E] (GrAP: the identity; dense gate: the gate matrix W_g).
    Returns:
        [T, E] angles in [0, π]; a zero vector counts as orthogonal (π/2).
    """
    dot = token_vectors @ gate_directions
    norms = np.linalg.norm(token_vectors, axis=-1)[:, None] * np.linalg.norm(gate_directions, axis=0)[None, :]
    cos = np.divide(dot, norms, out=np.zeros_like(dot, dtype=np.float64), where=norms > 0)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def expert_angles(
    angles: np.ndarray, expert: np.ndarray, num_experts: int, quantile: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-expert cone half-angle δ_e: the max (quantile=1) or a quantile of its copies' angles.

    Returns:
        delta: [E] (0 where an expert got no copy), seen: [E] True where it got at least one.
    """
    delta = np.zeros(num_experts, dtype=np.float64)
    seen = np.zeros(num_experts, dtype=bool)
    for e in np.unique(expert):
        a = angles[expert == e]
        delta[e] = a.max() if quantile >= 1.0 else np.quantile(a, quantile)
        seen[e] = True
    return delta, seen


def update_angle_ema(ema: np.ndarray | None, delta: np.ndarray, seen: np.ndarray, momentum: float) -> np.ndarray:
    """δ̄_e ← m·δ̄_e + (1−m)·δ_e for experts seen this step.

    An expert that has never been seen has no average (NaN; ``ema`` None = none seen yet) and takes its first
    δ as it is: starting unseen experts at 0 would shrink their cones for many steps (then 0.1·δ, 0.19·δ, ...)
    and give them capacity 1 while their load is in the hundreds.
    """
    prev = np.full(len(delta), np.nan) if ema is None else ema
    blended = np.where(np.isnan(prev), delta, momentum * prev + (1.0 - momentum) * delta)
    return np.where(seen, blended, prev)


def unseen_fallback(capacity: np.ndarray, ema: np.ndarray, factor_cap: int) -> np.ndarray:
    """[E] capacities where an expert without an angle average (NaN: never routed to) gets the factor
    capacity: there is nothing to measure its cone from."""
    return np.where(np.isnan(ema), factor_cap, capacity).astype(np.int64)


def cone_shares(delta: np.ndarray, n: int) -> np.ndarray:
    """σ_e = A_n(δ_e) / Σ_j A_n(δ_j); an unmeasured cone (NaN) is empty; uniform when every cone is empty."""
    area = cap_fraction(n, np.nan_to_num(delta, nan=0.0))
    total = area.sum()
    if total <= 0:
        return np.full(len(delta), 1.0 / len(delta))
    return area / total


def capacity_lower_bound(delta: np.ndarray, n: int, k: int, num_tokens: int) -> int:
    """The ``cone`` rule: C_min = ⌈k·T·max_e σ_e⌉, clipped to [1, k·T]."""
    share = cone_shares(delta, n).max()
    return int(min(max(math.ceil(k * num_tokens * share - 1e-9), 1), k * num_tokens))


def empirical_cone_shares(angles: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """σ_e = share of the step's tokens inside expert e's cone, normalised over experts (``quantile`` rule).

    The uniform sphere measure of ``cone_shares`` is replaced by the tokens' own distribution, which follows
    the cones as training concentrates tokens around their gates.

    Args:
        angles: [T, E] every token's angle to every gate direction.
        delta: [E] cone half-angles.
    """
    inside = (angles <= delta[None, :]).sum(axis=0).astype(np.float64)
    total = inside.sum()
    return inside / total if total > 0 else np.full(len(delta), 1.0 / len(delta))


def per_expert_bound(shares: np.ndarray, k: int, num_tokens: int, slack: float) -> np.ndarray:
    """[E] capacities ⌈slack · k·T · σ_e⌉, clipped to [1, k·T]."""
    c = np.ceil(slack * k * num_tokens * shares - 1e-9).astype(np.int64)
    return np.clip(c, 1, k * num_tokens)


def factor_capacity(factor: float, k: int, num_tokens: int, num_experts: int) -> int:
    """⌈c_f · k·T / E⌉, at least 1."""
    return max(1, math.ceil(factor * k * num_tokens / num_experts - 1e-9))
