"""Intra-node-first selection (LocMoE): prefer experts on the token's own node when they are nearly as good.

The rule, exactly: start from the top-k choice S of p_t and its k-th best probability p_(k). A local
candidate is an expert on the token's node, allowed for the token, not in S, with p ≥ ρ·p_(k). While a
candidate remains and S still holds a remote expert, the best candidate (highest p, ties: lower id)
replaces the lowest-ranked remote choice (lowest p, ties: higher id). ρ = 1 disables the rule (plain
top-k). Consequence, checked by the property tests: a token keeps a cross-node choice only if every local
expert with p ≥ ρ·p_(k) is already among its choices.
"""

from __future__ import annotations

import numpy as np

from locmoe.routing.topk import sort_choices, top_k


def intra_node_first(probs: np.ndarray, k: int, local_mask: np.ndarray, rho: float) -> np.ndarray:
    """Top-k with local replacements.

    Args:
        probs: [T, E] routing probabilities.
        k: experts per token.
        local_mask: [T, E] True where the expert is on the token's node (and allowed for it).
        rho: threshold in (0, 1].
    Returns:
        [T, k] chosen expert ids, best first.
    """
    idx, vals = top_k(probs, k)
    if rho >= 1.0:
        return idx
    T, E = probs.shape
    rows = np.arange(T)
    threshold = rho * vals[:, -1:]  # [T, 1] ρ·p_(k)
    for _ in range(k):
        chosen = np.zeros((T, E), dtype=bool)
        chosen[rows[:, None], idx] = True
        cand = np.where(local_mask & ~chosen & (probs >= threshold), probs, -np.inf)
        best = cand.argmax(axis=-1)  # argmax takes the lower id on ties
        has_cand = np.isfinite(cand[rows, best])
        remote = ~local_mask[rows[:, None], idx]  # [T, k]; idx is best first
        # lowest-ranked remote slot = the last remote slot in best-first order
        last_remote = k - 1 - np.argmax(remote[:, ::-1], axis=-1)
        swap = has_cand & remote.any(axis=-1)
        if not swap.any():
            break
        idx = idx.copy()
        idx[rows[swap], last_remote[swap]] = best[swap]
        idx = sort_choices(probs, idx)
    return idx
