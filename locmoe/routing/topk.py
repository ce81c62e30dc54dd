"""Top-k selection and combine weights, with the tie rule every backend follows."""

from __future__ import annotations

import numpy as np


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable experts per token, best first; equal probabilities go to the lower expert id.

    Args:
        probs: [T, E] routing probabilities.
    Returns:
        idx: [T, k] expert ids, vals: [T, k] their probabilities.
    """
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=-1)


def sort_choices(probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Reorder each token's chosen experts best first (ties: lower id), the canonical order of a choice."""
    vals = np.take_along_axis(probs, idx, axis=-1)
    # lexsort keys are applied last-to-first: primary -prob, secondary expert id.
    order = np.lexsort((idx, -vals), axis=-1)
    return np.take_along_axis(idx, order, axis=-1)


def combine_weights(chosen_probs: np.ndarray) -> np.ndarray:
    """Weights of the k expert outputs: the chosen probabilities renormalised over the k choices when k > 1.

    With k = 1 the raw probability is kept (Switch): renormalising would make it 1 and cut the gate's
    gradient from the task loss.
    """
    if chosen_probs.shape[-1] == 1:
        return chosen_probs
    return chosen_probs / chosen_probs.sum(axis=-1, keepdims=True)
