"""LocMoE's capacity lower bound as the papers state it (LocMoE Lemma 3 / Theorem 1; LocMoE+ Remark 7).

The paper's set-up: gate vectors of equal norm, tokens uniform on the sphere S^{d−1} of the d-dimensional token
space (d = hidden size), and a token "belongs" to expert i when cos(x, w_i) ≥ δ. For a uniform direction
cos²θ ~ Beta(½, (d−1)/2), so

    p_δ = P(|cos θ| ≥ δ) = 1 − I_{δ²}(½, (d−1)/2)                       (Lemma 3)
    ec_min = 1 / (n · p_δ)                                               (Theorem 1, n = experts)
    ec_min ≈ 1/(n·erfc(√(δ²d/(2−δ²)))) > (1/n)·exp(δ²d/(2−δ²))     (large d; the right side: LocMoE+ Remark 7)

**Units (our reading, docs/method.md):** ec is a fraction of the step's token copies, so expert e admits
``C = ⌈ec_min · k·T⌉`` copies (T the tokens of the expert-parallel group in this layer call, k per token),
clipped to [1, k·T]. Equivalently a capacity factor c_f = ec_min·n = 1/p_δ: δ = 0 gives p = 1 and exactly the
balanced load k·T/n; a larger δ asks for more room.

**δ (our definition, the paper's text measures "δ ≈ 0.03" without a formula):** the cosine distance
``1 − cos(x_t, w_e)`` between a token and the gate vector of an expert it was routed to, in the d-dimensional
token space (GrAP: w_e = n/d on group e; learned gate: the column W_g[:, e]); δ_max = the largest over the
step's routed copies (LocMoE+'s δ_max). A cosine distance above 1 (an obtuse token) leaves the formula's
domain: δ is clipped to 1, where p = 0 and the bound is k·T (nothing dropped).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc

from locmoe.config.schema import PAPER_FORMS
from locmoe.routing.capacity import update_angle_ema


def belong_probability(delta: float, d: int) -> float:
    """p_δ = 1 − I_{δ²}(½, (d−1)/2): the share of uniform directions in R^d with |cos| ≥ δ (δ clipped to [0, 1])."""
    if d < 2:
        raise ValueError(f"the token space must have dimension d >= 2, got {d}")
    delta = min(max(float(delta), 0.0), 1.0)
    return float(1.0 - betainc(0.5, (d - 1) / 2.0, delta * delta))


def min_capacity_fraction(delta: float, d: int, n: int, form: str = "exact") -> float:
    """ec_min: Theorem 1 (``exact``) or LocMoE+ Remark 7's large-d bound (1/n)·exp(dδ²/(2−δ²)) (``exp``).

    Returns +inf where p_δ = 0 (the bound then saturates at k·T)."""
    if form not in PAPER_FORMS:
        raise ValueError(f"paper bound form must be one of {PAPER_FORMS}, got {form!r}")
    delta = min(max(float(delta), 0.0), 1.0)
    if form == "exp":
        exponent = d * delta * delta / (2.0 - delta * delta)
        return math.inf if exponent > 700.0 else math.exp(exponent) / n  # exp(709) is float64's largest
    p = belong_probability(delta, d)
    return math.inf if p <= 0.0 else 1.0 / (n * p)


def paper_capacity(delta: float, d: int, n: int, k: int, num_tokens: int, form: str = "exact") -> int:
    """C = ⌈ec_min · k·T⌉ copies per expert, clipped to [1, k·T]."""
    ec = min_capacity_fraction(delta, d, n, form)
    full = k * num_tokens
    if not math.isfinite(ec) or ec >= 1.0:
        return full
    return int(min(max(math.ceil(ec * full - 1e-9), 1), full))


def cosine_deviation(x: np.ndarray, gate_columns: np.ndarray) -> np.ndarray:
    """[T, E] cosine distance 1 − cos(x_t, w_e) in the token space; a zero vector counts as orthogonal (1).

    Args:
        x: [T, d] tokens; gate_columns: [d, E] the gate vectors (GrAP: ``grap_gate_matrix``).
    """
    dot = x @ gate_columns
    norms = np.linalg.norm(x, axis=-1)[:, None] * np.linalg.norm(gate_columns, axis=0)[None, :]
    cos = np.divide(dot, norms, out=np.zeros_like(dot, dtype=np.float64), where=norms > 0)
    return 1.0 - np.clip(cos, -1.0, 1.0)


def update_paper_delta(
    state: np.ndarray | None, delta: np.ndarray, seen: np.ndarray, schedule: str, momentum: float
) -> np.ndarray:
    """The [E] δ state of the paper rule (stored where the other rules keep their angle averages).

    first_batch (LocMoE): the first step that routes anything sets every entry to that step's δ_max, and it
    stays fixed. ema (LocMoE+'s re-estimation): each expert's δ averaged over steps like the other rules'
    angles (NaN until seen); the bound reads the largest entry.
    """
    E = len(delta)
    prev = np.full(E, np.nan) if state is None else state
    if schedule == "first_batch":
        if np.isnan(prev).all() and seen.any():
            return np.full(E, delta[seen].max())
        return prev
    return update_angle_ema(prev, delta, seen, momentum)
