"""Node-limited top-k (DeepSeek-V2 device-limited / DeepSeek-V3 node-limited routing), a baseline for LocMoE.

Each token first picks its M best nodes, then its top-k experts among the experts on them, so its copies reach
at most M nodes. With M = 1 all of a token's copies go to one node — its best one, which need not be its own, so
copies still cross nodes. The node score is the best selection score of the node's experts (``max``, V2) or the sum
of its two best (``top2_sum``, V3); equal scores go to the lower node id, then top-k ties to the lower expert id.
"""

from __future__ import annotations

import numpy as np

from locmoe.config.errors import ConfigError
from locmoe.parallel.topology import ExpertPlacement
from locmoe.routing.topk import top_k


def node_expert_table(placement: ExpertPlacement) -> np.ndarray:
    """[N, E/N] the experts on each node, ascending (every node holds E/N: each rank holds E/W)."""
    return np.array([placement.node_experts(n) for n in range(placement.topology.num_nodes)], dtype=np.int64)


def node_scores(sel: np.ndarray, table: np.ndarray, how: str) -> np.ndarray:
    """[T, N] each node's score from the selection scores sel [T, E] (-inf: an expert the token may not use)."""
    per = sel[:, table]  # [T, N, E/N]
    if how == "max":
        return per.max(axis=-1)
    best = -np.sort(-per, axis=-1)  # descending
    first = best[..., 0]
    second = best[..., 1] if best.shape[-1] > 1 else np.full_like(first, -np.inf)
    return np.where(np.isfinite(first), first + np.where(np.isfinite(second), second, 0.0), -np.inf)


def node_limited_top_k(sel: np.ndarray, k: int, num_nodes: int, table: np.ndarray, how: str) -> np.ndarray:
    """[T, k] top-k experts among those on each token's ``num_nodes`` best nodes, best first."""
    T, N = sel.shape[0], table.shape[0]
    score = node_scores(sel, table, how)
    nodes = np.argsort(-score, axis=-1, kind="stable")[:, :num_nodes]  # ties: lower node id
    keep = np.zeros((T, N), dtype=bool)
    keep[np.arange(T)[:, None], nodes] = True
    node_of = np.zeros(sel.shape[1], dtype=np.int64)
    node_of[table.reshape(-1)] = np.repeat(np.arange(N), table.shape[1])
    return top_k(np.where(keep[:, node_of], sel, -np.inf), k)[0]


def check_node_limit(table: np.ndarray, groups: np.ndarray, num_nodes: int, k: int) -> None:
    """Every token must find k experts it may use on any M nodes it picks: for each domain group, the M
    nodes holding the fewest of its experts (among nodes holding any) must hold at least k."""
    if num_nodes > table.shape[0]:
        raise ConfigError("moe.router.node_limit", f"{num_nodes} is more than the topology's {table.shape[0]} nodes")
    for d, group in enumerate(groups):
        held = np.isin(table, group).sum(axis=1)
        worst = np.sort(held[held > 0])[:num_nodes].sum()
        if worst < k:
            raise ConfigError(
                "moe.router.node_limit",
                f"{num_nodes} node(s) may hold only {worst} of domain {d}'s "
                f"experts, fewer than top_k = {k}: raise node_limit or lower top_k",
            )
