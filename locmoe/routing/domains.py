"""Random Routed Experts, level 1 (PanGu-Σ): a sample's domain selects its group of experts.

Groups are strided (group g = experts g, g+D, g+2D, ...) so that every group has experts on every node
and the locality rule can act for every domain; which domain gets which group is a fixed seeded random map.
"""

from __future__ import annotations

import numpy as np


def domain_expert_groups(num_domains: int, num_experts: int, seed: int) -> np.ndarray:
    """[D, E/D] the experts of each domain's group, ascending."""
    if num_experts % num_domains:
        raise ValueError(f"moe.domains.num_domains ({num_domains}) must divide moe.num_experts ({num_experts})")
    strided = np.arange(num_experts).reshape(num_experts // num_domains, num_domains).T  # [D, E/D]
    group_of_domain = np.random.default_rng(seed).permutation(num_domains)
    return strided[group_of_domain]


def allowed_experts(domain: np.ndarray, groups: np.ndarray, num_experts: int) -> np.ndarray:
    """[T, E] True where expert e belongs to token t's domain group."""
    if domain.size and (domain.min() < 0 or domain.max() >= len(groups)):
        raise ValueError(f"domain ids must lie in [0, {len(groups)}), got [{domain.min()}, {domain.max()}]")
    member = np.zeros((len(groups), num_experts), dtype=bool)
    member[np.arange(len(groups))[:, None], groups] = True
    return member[domain]
