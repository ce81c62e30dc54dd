"""Forced balance (``moe.force_balance``): a benchmark's routing, every expert the same load.

Megatron-Core and torchtitan quote their MoE throughput with routing forced to balance, so that a figure
measures the layer, not how balanced a young router happens to be. torchtitan's rule, taken here exactly:
token i of a rank's batch (its position among that rank's tokens) goes to experts (i·k + j) mod E for
j < k, weighted by the router's own probabilities of those experts (then renormalised over the k as usual),
so the gate still gets a gradient and the losses are computed as usual. Megatron-Core instead replaces the
logits by random normal ones (balanced in expectation, not exactly). Not with domains (Random Routed
Experts): the config refuses it, as a round-robin over all experts would leave the domains' groups.
"""

from __future__ import annotations

import numpy as np


def rank_positions(token_rank: np.ndarray) -> np.ndarray:
    """[T] each token's index among the tokens of its own rank (in the order they appear)."""
    order = np.argsort(token_rank, kind="stable")
    ranks = token_rank[order]
    first = np.searchsorted(ranks, ranks, side="left")  # where each token's rank starts in sorted order
    pos = np.empty(len(token_rank), dtype=np.int64)
    pos[order] = np.arange(len(token_rank)) - first
    return pos


def forced_experts(position: np.ndarray, k: int, num_experts: int) -> np.ndarray:
    """[T, k] the round-robin choice: experts (i·k + j) mod E of the token at ``position`` i [T]."""
    return (position[:, None] * k + np.arange(k)) % num_experts
