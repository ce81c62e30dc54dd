"""Auxiliary losses: the Switch/GShard load-balance loss and the LocMoE locality loss (DESIGN §5)."""
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
