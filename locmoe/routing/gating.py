"""Gate scores: GrAP (grouped average pooling, LocMoE §3) and the learned dense gate it replaces.

GrAP cuts x_t ∈ R^d into E contiguous groups of d/E features and averages each group, so the score of
expert e is s_{t,e} = mean(x_t[e·d/E : (e+1)·d/E]). That equals x_t · W for a fixed W ∈ R^{d×E} whose
column e is E/d on group e and 0 elsewhere: orthogonal columns, and d additions instead of a d×E matmul.
"""

from __future__ import annotations

import numpy as np


def grap_gate_matrix(d: int, num_experts: int, dtype=np.float64) -> np.ndarray:
    """The fixed GrAP gate W: [d, E], column e = E/d on features e·d/E .. (e+1)·d/E - 1."""
    if d % num_experts:
        raise ValueError(f"GrAP needs num_experts ({num_experts}) to divide the hidden size ({d})")
    group = d // num_experts
    w = np.zeros((d, num_experts), dtype=dtype)
    for e in range(num_experts):
        w[e * group : (e + 1) * group, e] = 1.0 / group
    return w


def grap_scores(x: np.ndarray, num_experts: int) -> np.ndarray:
    """GrAP scores. x: [T, d] -> s: [T, E], s[t, e] = mean of group e of x[t]."""
    T, d = x.shape
    if d % num_experts:
        raise ValueError(f"GrAP needs num_experts ({num_experts}) to divide the hidden size ({d})")
    return x.reshape(T, num_experts, d // num_experts).mean(axis=-1)


def dense_gate_scores(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Learned gate scores. x: [T, d], weight: [d, E] -> [T, E]."""
    return x @ weight


def masked_logits(scores: np.ndarray, temperature: float = 1.0, allowed: np.ndarray | None = None) -> np.ndarray:
    """scores / τ with experts outside a token's allowed group (Random Routed Experts) set to -inf."""
    z = scores / temperature
    if allowed is not None:
        z = np.where(allowed, z, -np.inf)
    return z


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of [T, E] logits (-inf entries give -inf)."""
    m = z.max(axis=-1, keepdims=True)
    shifted = z - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [T, E] logits; -inf entries get probability 0."""
    return np.exp(log_softmax(z))


def paper_gate(scores: np.ndarray, activation: str = "none", bias: np.ndarray | None = None) -> np.ndarray:
    """LocMoE's gate (§3.2, Eq. 2–3): G = ReLU(ω·x + ε), ε a learned bias per expert [E] (init 0).

    ``scores`` is ω·x ([T, E]: GrAP or a learned gate); ``activation`` "relu" or "none", ``bias`` None = no ε.
    """
    g = scores if bias is None else scores + bias
    return np.maximum(g, 0.0) if activation == "relu" else g


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Element-wise logistic of [T, E] logits (DeepSeek-V3's affinities); -inf entries give 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))
