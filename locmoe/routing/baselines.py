"""Classic routers to compare LocMoE against: Switch top-1, GShard top-2, hash, expert choice.

Switch and GShard are the top-k selections of ``topk`` (k = 1 with the raw probability as weight; k = 2
renormalised). GShard here is deterministic top-2 (as in Mixtral/Megatron), not the original's random
second expert. The hash router (Roller et al.) and PanGu-Σ's random routed experts use a fixed seeded
token-id → slot table; expert choice (Zhou et al.) lets every expert pick its top tokens.
"""

from __future__ import annotations

import numpy as np


def hash_table(vocab_size: int, num_slots: int, seed: int) -> np.ndarray:
    """[V] fixed random slot in [0, num_slots) of every token id."""
    return np.random.default_rng(seed).integers(0, num_slots, size=vocab_size, dtype=np.int64)


def hash_route(token_ids: np.ndarray, table: np.ndarray, groups: np.ndarray, domain: np.ndarray) -> np.ndarray:
    """[T, 1] expert of each token: slot table[token_id] of its domain's group (groups: [D, E/D])."""
    if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= len(table)):
        raise ValueError(
            f"token ids must lie in [0, {len(table)}) for the hash router, got [{token_ids.min()}, {token_ids.max()}]"
        )
    return groups[domain, table[token_ids] % groups.shape[1]][:, None]


def expert_choice(probs: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Each expert takes its ``capacity`` most probable tokens (ties: lower token id).

    Args:
        probs: [T, E] (0 for experts a token may not use; those pairs are never chosen).
    Returns:
        token, expert: [C] the chosen pairs sorted by (token, expert).
    """
    T, E = probs.shape
    take = min(capacity, T)
    order = np.argsort(-probs, axis=0, kind="stable")[:take]  # [take, E] token ids per expert
    token = order.T.reshape(-1)
    expert = np.repeat(np.arange(E), take)
    ok = probs[token, expert] > 0
    token, expert = token[ok], expert[ok]
    sort = np.lexsort((expert, token))
    return token[sort], expert[sort]
