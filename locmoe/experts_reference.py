"""Numpy reference of the expert FFNs and the weighted combine: the output every backend is tested against."""

from __future__ import annotations

import numpy as np

from locmoe.routing.dispatch_plan import DispatchPlan


def silu(h: np.ndarray) -> np.ndarray:
    return h / (1.0 + np.exp(-h))


def gelu(h: np.ndarray) -> np.ndarray:
    """Exact (erf) GeLU, as torch.nn.functional.gelu's default."""
    from scipy.special import erf

    return 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))


def expert_ffn(x: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray | None, activation: str) -> np.ndarray:
    """One expert. x: [M, d], w1/w3: [d, f], w2: [f, d] -> [M, d]."""
    h = x @ w1
    h = silu(h) * (x @ w3) if activation == "swiglu" else gelu(h)
    return h @ w2


def moe_forward(
    x: np.ndarray, plan: DispatchPlan, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray | None, activation: str = "swiglu"
) -> np.ndarray:
    """y_t = Σ over token t's kept copies c of weight_c · FFN_{expert_c}(x_t); dropped copies add nothing.

    Args:
        x: [T, d] the group's tokens; w1, w3: [E, d, f]; w2: [E, f, d] (global expert order).
    """
    y = np.zeros_like(x)
    kept = np.flatnonzero(plan.kept)
    for e in np.unique(plan.expert[kept]):
        c = kept[plan.expert[kept] == e]
        out = expert_ffn(x[plan.token[c]], w1[e], w2[e], None if w3 is None else w3[e], activation)
        np.add.at(y, plan.token[c], plan.weight[c][:, None] * out)
    return y
