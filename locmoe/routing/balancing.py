"""Auxiliary-loss-free load balancing (Wang et al. 2024, DeepSeek-V3 §2.1.2), a baseline for LocMoE.

A per-expert bias b is added to the affinity scores for the *selection* only (the combine weights and the
admission priority keep the raw affinities, so b gets no gradient); after each training step it moves by a
fixed rate γ against the load error: b_i ← b_i + γ·sign(mean_j load_j − load_i), load = the copies routed to
each expert in the step over the whole expert-parallel group, before capacity. An underloaded expert's bias
grows, an overloaded one's shrinks; a load exactly at the mean leaves it unchanged (sign 0).
"""

from __future__ import annotations

import numpy as np


def selection_scores(affinity: np.ndarray, bias: np.ndarray | None, allowed: np.ndarray | None) -> np.ndarray:
    """[T, E] the scores top-k ranks: affinity + b, -inf where a token may not use the expert (a positive
    bias must not lift a masked expert, whose affinity is 0, above an allowed one)."""
    sel = affinity if bias is None else affinity + bias
    return sel if allowed is None else np.where(allowed, sel, -np.inf)


def update_selection_bias(bias: np.ndarray, load: np.ndarray, rate: float) -> np.ndarray:
    """b + γ·sign(mean(load) − load). bias, load: [E]."""
    load = np.asarray(load, dtype=np.float64)
    return bias + rate * np.sign(load.mean() - load)
