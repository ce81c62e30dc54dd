"""Capacity admission: each expert admits copies on-rank first, then in-node, then cross-node.

Inside a class, copies with a higher probability go first; equal probabilities go by copy id (token order,
then choice order). Copies beyond the expert's capacity are dropped: the token keeps its residual path.
"""

from __future__ import annotations

import numpy as np


def admission_order(expert: np.ndarray, prob: np.ndarray, locality: np.ndarray) -> np.ndarray:
    """Copy ids sorted by (expert, locality class, -prob, copy id): each expert's queue, best first."""
    copy_id = np.arange(len(expert))
    return np.lexsort((copy_id, -prob, locality, expert))


def admit(expert: np.ndarray, prob: np.ndarray, locality: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Which copies fit.

    Args:
        expert, prob, locality: [C] each copy's expert, routing probability and class (0 on-rank,
            1 in-node, 2 cross-node).
        capacity: [E] copies each expert admits.
    Returns:
        kept: [C] bool.
    """
    order = admission_order(expert, prob, locality)
    sorted_expert = expert[order]
    counts = np.bincount(sorted_expert, minlength=len(capacity))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(order)) - starts[sorted_expert]  # place in the expert's queue
    kept = np.zeros(len(expert), dtype=bool)
    kept[order] = position < capacity[sorted_expert]
    return kept
