"""Synthetic routing traces with planted inter-layer affinity and load skew, for development and tests.

Real numbers come from traces recorded from a trained checkpoint; this generator only lets the planners
be exercised before one exists. Model: each token has a hidden *topic* c (popularity ∝ (rank+1)^-skew over
``groups`` topics). At every layer, topic c prefers its own E/groups experts (a fresh random set per
layer, so contiguous or round-robin maps do not capture it); inside the set the experts are again skewed.
A token's k distinct choices are drawn without replacement from
``q = strength · preferred(c) + (1 − strength) · uniform`` (Gumbel top-k), so ``strength`` sets how much
layer l predicts layer l+1 and ``skew`` how uneven the expert loads are.
"""

from __future__ import annotations

import numpy as np

from locmoe.placement.trace import RoutingTrace


def zipf_weights(n: int, skew: float) -> np.ndarray:
    """[n] probabilities ∝ (rank + 1)^-skew (uniform at skew 0)."""
    w = (np.arange(n) + 1.0) ** -skew
    return w / w.sum()


def planted_trace(
    num_tokens: int = 20000,
    num_experts: int = 16,
    top_k: int = 2,
    num_layers: int = 4,
    groups: int = 8,
    strength: float = 0.85,
    skew: float = 0.5,
    seed: int = 0,
) -> RoutingTrace:
    """A trace of ``num_layers`` MoE layers whose topics plant affinity; see the module docstring."""
    if num_experts % groups:
        raise ValueError(f"groups {groups} must divide num_experts {num_experts}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength} must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    E, size = num_experts, num_experts // groups
    topic = rng.choice(groups, size=num_tokens, p=zipf_weights(groups, skew))
    inside = zipf_weights(size, skew)
    layers = []
    for _ in range(num_layers):
        perm = rng.permutation(E)
        q = np.full((groups, E), (1.0 - strength) / E)
        for c in range(groups):
            q[c, perm[c * size : (c + 1) * size]] += strength * inside
        gumbel = -np.log(-np.log(rng.random((num_tokens, E))))
        with np.errstate(divide="ignore"):  # strength 1: log 0 = -inf, never drawn
            keys: np.ndarray = np.log(q[topic]) + gumbel  # [T, E]: Gumbel top-k = sampling w/o replacement
        layers.append(np.argsort(-keys, axis=1)[:, :top_k].astype(np.int32))
    fingerprint = {
        "num_experts": E,
        "top_k": top_k,
        "moe_layers": list(range(num_layers)),
        "router_kind": "synthetic",
        "d_model": 0,
        "vocab_size": 0,
    }
    source = {
        "synthetic": {"num_tokens": num_tokens, "groups": groups, "strength": strength, "skew": skew, "seed": seed}
    }
    return RoutingTrace(fingerprint, layers, source)
