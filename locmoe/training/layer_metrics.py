"""One MoE layer call's routing statistics as the plain numbers logs and benchmarks read, from host
arrays: the same keys and arithmetic for both backends."""

from __future__ import annotations

from typing import Optional

import numpy as np

from locmoe.parallel.traffic import TrafficCounter


def layer_summary(
    expert_load: np.ndarray,
    admitted: np.ndarray,
    capacity: np.ndarray,
    capacity_bound: Optional[int],
    locality_counts: np.ndarray,
    total_copies: int,
    aux_loss: float,
    locality_loss: float,
    traffic: TrafficCounter,
) -> dict:
    loc = np.asarray(locality_counts, dtype=np.float64)
    frac = (loc / max(loc.sum(), 1.0)).tolist()
    dropped = int(np.sum(expert_load) - np.sum(admitted))
    return {
        "aux_loss": float(aux_loss),
        "locality_loss": float(locality_loss),
        "dropped_fraction": dropped / max(total_copies, 1),
        "on_rank_fraction": frac[0],
        "in_node_fraction": frac[1],
        "cross_node_fraction": frac[2],
        "capacity_max": int(np.max(capacity)),
        "capacity_bound": capacity_bound,
        "max_expert_load": int(np.max(expert_load)),
        "intra_node_bytes": traffic.intra_node,
        "cross_node_bytes": traffic.cross_node,
    }
