"""Routing statistics of the numpy reference router on an emulated N × G cluster, for the cluster
simulator: one random batch per router (the same tokens for every router), like ``locmoe route-demo``.

Random hidden states are the *untrained* case: a trained LocMoE router (locality loss) keeps more copies
in the node. Statistics measured on real training batches (cross-node share, max load, drops from the
training logs) can be given to the simulator instead.
"""

from __future__ import annotations

import numpy as np

from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.planning.cluster_sim import Calibration, MoEModel, RoutingStats, System, step_time


def reference_stats(
    router: str,
    nodes: int,
    per_node: int,
    num_experts: int,
    tokens_per_rank: int = 64,
    d_model: int = 256,
    capacity_factor: float = 1.25,
    rho: float = 0.5,
    seed: int = 0,
) -> RoutingStats:
    """Route one random batch with ``router`` (locmoe, gshard, switch) and summarise the plan."""
    from locmoe.config import load_config
    from locmoe.routing import route

    topo = Topology(nodes, per_node)
    placement = ExpertPlacement.contiguous(num_experts, topo)
    rng = np.random.default_rng(seed)
    T = tokens_per_rank * topo.world_size
    x = rng.standard_normal((T, d_model))
    gate = rng.standard_normal((d_model, num_experts)) / np.sqrt(d_model)
    token_rank = np.repeat(np.arange(topo.world_size), tokens_per_rank)
    moe = load_config(
        overrides=[
            f"model.d_model={d_model}",
            f"moe.num_experts={num_experts}",
            f"moe.router.kind={router}",
            f"moe.router.rho={rho}",
            f"moe.capacity.factor={capacity_factor}",
        ]
    ).moe
    res = route(x, moe, placement, token_rank, gate_weight=gate)
    stats = RoutingStats.from_plan(res.plan)
    stats.capacity_factor = capacity_factor
    return stats


def project_routers(
    model: MoEModel,
    cal: Calibration,
    nodes: int,
    per_node: int,
    stats: dict | None = None,
    overlap_chunks: int = 1,
    seed: int = 0,
) -> list[dict]:
    """Step-time rows for LocMoE (hierarchical all-to-all) and GShard/Switch (flat), from ``stats``
    {name: RoutingStats} or, by default, the reference router on one random batch at this scale."""
    if stats is None:
        stats = {
            r: reference_stats(r, nodes, per_node, model.num_experts, seed=seed) for r in ("locmoe", "gshard", "switch")
        }
    rows = []
    for name, s in stats.items():
        local = name == "locmoe"
        sys = System(name, s, "hierarchical" if local else "flat", overlap_chunks=overlap_chunks if local else 1)
        rows.append(step_time(model, sys, cal, nodes, per_node))
    base = next((r["step_ms"] for r in rows if r["system"] == "gshard"), None)
    for r in rows:
        r["vs_gshard"] = r["step_ms"] / base if base else ""
    return rows
