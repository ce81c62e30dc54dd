"""Auxiliary losses: the Switch/GShard load-balance loss and the LocMoE locality loss (docs/method.md)."""

from __future__ import annotations

import numpy as np


def load_balance_loss(probs: np.ndarray, expert_ids: np.ndarray, num_experts: int) -> float:
    """L_aux = E · Σ_e f_e · P_e over one group of tokens (one rank's batch).

    Args:
        probs: [T, E] routing probabilities p_t.
        expert_ids: [T, k] chosen experts (before capacity): f_e is the fraction of the T·k copies sent to e.
    Returns:
        The loss; 1.0 when both the choices and the probabilities are uniform.
    """
    T, k = expert_ids.shape
    f = np.bincount(expert_ids.reshape(-1), minlength=num_experts) / (T * k)
    P = probs.mean(axis=0)
    return float(num_experts * np.dot(f, P))


def locality_loss(log_probs: np.ndarray, local_mask: np.ndarray) -> float:
    """L_loc = (1/T) Σ_t KL(q_t ‖ p_t), q_t uniform over the experts on token t's node (LocMoE §3).

    KL(q ‖ p) = -log|L| - (1/|L|) Σ_{e∈L} log p_e. A token whose node hosts none of its allowed experts has
    no q_t and contributes 0 (it still counts in T).

    Args:
        log_probs: [T, E] log p_t (from a log-softmax, so masked experts are -inf and never local).
        local_mask: [T, E] True where expert e is on token t's node and allowed for the token.
    """
    n_local = local_mask.sum(axis=-1)
    safe = np.where(local_mask, log_probs, 0.0)
    has = n_local > 0
    per_token = np.zeros(log_probs.shape[0], dtype=log_probs.dtype)
    per_token[has] = -np.log(n_local[has]) - safe[has].sum(axis=-1) / n_local[has]
    return float(per_token.mean())


def router_z_loss(logits: np.ndarray) -> float:
    """ST-MoE's router z-loss: (1/T) Σ_t (log Σ_e exp z_{t,e})², over the experts a token may use (-inf
    logits are excluded). Keeps the logits small, which keeps the softmax stable in low precision."""
    m = logits.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1))
    return float(np.mean(lse**2))


def localised_distribution(local_mask: np.ndarray, allowed: np.ndarray | None, smoothing: float) -> np.ndarray:
    """D_l^ε [E] of one group of tokens: the mean of q_t, q_t uniform over the token's local allowed experts
    (over its allowed experts when its node hosts none), mixed with ε of the mean uniform-over-allowed.

    The fully localised D_l is 0 on every remote expert, so KL(D_c ‖ D_l) would be +∞ as soon as one remote
    expert has any probability. Mixing in ε (default 0.01) keeps it finite; the loss then has its minimum at
    D_c = D_l^ε: mass ε may stay remote, a soft constraint as the paper says locality is.
    """
    T, E = local_mask.shape
    allow = np.ones((T, E), dtype=bool) if allowed is None else allowed
    target = np.where(local_mask.any(axis=-1, keepdims=True), local_mask, allow).astype(np.float64)
    q = target / target.sum(axis=-1, keepdims=True)
    u = allow / allow.sum(axis=-1, keepdims=True)
    return (1.0 - smoothing) * q.mean(axis=0) + smoothing * u.mean(axis=0)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) = Σ_e p_e log(p_e / q_e) with 0·log 0 = 0 (q > 0 wherever p > 0)."""
    pos = p > 0
    return float(np.sum(p[pos] * (np.log(p[pos]) - np.log(q[pos]))))


def batch_locality_loss(
    probs: np.ndarray, local_mask: np.ndarray, allowed: np.ndarray | None, token_rank: np.ndarray, smoothing: float
) -> float:
    """LocMoE Eq. 6, KL(D_c ‖ D_l): per source rank (its tokens share a node), D_c = the mean of p_t over
    its tokens — the batch's expected distribution of assignments, differentiable through P, where the
    argmax counts would not be — against :func:`localised_distribution`; averaged over ranks like L_aux.

    Args:
        probs: [T, E]; local_mask, allowed: [T, E] (allowed None = every expert); token_rank: [T].
    """
    losses = []
    for r in np.unique(token_rank):
        mine = token_rank == r
        d_l = localised_distribution(local_mask[mine], None if allowed is None else allowed[mine], smoothing)
        losses.append(kl_divergence(probs[mine].mean(axis=0), d_l))
    return float(np.mean(losses))
