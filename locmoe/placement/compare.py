"""One table comparing placements on a trace: round-robin, contiguous, greedy and ExFlow (ILP or greedy),
shared by ``locmoe plan place`` and ``scripts/bench/placement.py``."""

from __future__ import annotations

import time

import numpy as np

from locmoe.placement.exflow import PlacementPlan, place_exflow
from locmoe.placement.greedy import greedy_placement
from locmoe.placement.hops import (
    baseline_assignment,
    coherent_fraction,
    device_loads,
    expected_hops,
    imbalance,
    node_hops,
    pair_weights,
)
from locmoe.placement.trace import RoutingTrace


def placement_row(
    name: str,
    trace: RoutingTrace,
    weights: list,
    assignment: np.ndarray,
    num_devices: int,
    devices_per_node: int | None,
    rr_hops: float,
    seconds: float = 0.0,
) -> dict:
    """Hops (and ÷ round-robin), node hops, context-coherent share, worst layer's max/mean device load."""
    hops = expected_hops(weights, assignment)
    loads = trace.expert_load()
    worst = max(imbalance(device_loads(loads[l], assignment[l], num_devices)) for l in range(trace.num_layers))
    row = {
        "placement": name,
        "hops": hops,
        "hops_vs_round_robin": hops / rr_hops if rr_hops else 0.0,
        "coherent": coherent_fraction(trace, assignment),
        "max_mean_load": worst,
        "seconds": seconds,
    }
    if devices_per_node:
        row["node_hops"] = node_hops(weights, assignment, devices_per_node)
    return row


def compare_placements(
    trace: RoutingTrace,
    num_devices: int,
    devices_per_node: int | None = None,
    method: str = "auto",
    time_limit: float = 30.0,
    load_limit: float | None = None,
    seed: int = 0,
) -> tuple[list[dict], PlacementPlan]:
    """(table rows, the ExFlow plan) for one trace on ``num_devices`` devices."""
    weights = pair_weights(trace)
    L, E, D = trace.num_layers, trace.num_experts, num_devices
    rr = baseline_assignment("round_robin", L, E, D)
    rr_hops = expected_hops(weights, rr)
    rows = [
        placement_row("round_robin", trace, weights, rr, D, devices_per_node, rr_hops),
        placement_row(
            "contiguous", trace, weights, baseline_assignment("contiguous", L, E, D), D, devices_per_node, rr_hops
        ),
    ]
    start = time.perf_counter()
    greedy = greedy_placement(weights, L, E, D, seed=seed)
    rows.append(
        placement_row("greedy", trace, weights, greedy, D, devices_per_node, rr_hops, time.perf_counter() - start)
    )
    plan = place_exflow(trace, D, method=method, time_limit=time_limit, load_limit=load_limit, seed=seed)
    row = placement_row(
        f"exflow ({plan.method}, {plan.status})",
        trace,
        weights,
        plan.assignment,
        D,
        devices_per_node,
        rr_hops,
        plan.solve_seconds,
    )
    row["hops_lower_bound"] = plan.hops_lower_bound if plan.hops_lower_bound is not None else ""
    rows.append(row)
    return rows, plan
