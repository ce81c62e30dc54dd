"""GRACE-MoE planning: affinity-based grouping of experts onto devices, replication of the hottest experts
under a memory budget, and locality-aware replica routing (arXiv 2509.25041).

Grouping (the primary placement, E/D experts per device so the training topology's weight layout holds):
- ``exflow``: the inter-layer affinity placement of :mod:`.exflow` (tokens stay on a device from layer
  to layer; the context-coherent plan);
- ``coactivation``: GRACE's intra-layer grouping: per layer, a balanced partition that keeps experts
  chosen by the same token together (fewer devices per token), by pairwise-swap local search;
- ``contiguous`` / ``round_robin``: the fixed maps, for comparison.
Then each layer gets replicas (:mod:`.replication`) and every token copy a device
(:mod:`.replica_routing`). Where a token *is* when layer l dispatches (``token_placement``): ``home``,
its data-parallel device (the trace's tokens cut into D contiguous blocks: GRACE's setting, attention
on the token's own device), or ``previous``, the device that served its first choice at layer l−1
(context-coherent serving).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from locmoe.placement.affinity import coactivation_counts
from locmoe.placement.errors import PlacementError
from locmoe.placement.exflow import place_exflow
from locmoe.placement.hops import baseline_assignment, check_devices, imbalance
from locmoe.placement.replica_routing import route_tokens
from locmoe.placement.replication import ReplicatedLayer, flows, replicate_layer, routed_loads
from locmoe.placement.trace import RoutingTrace

GROUPINGS = ("exflow", "coactivation", "contiguous", "round_robin")
TOKEN_PLACEMENTS = ("home", "previous")


@dataclass(kw_only=True)
class GracePlan:
    """Grouping + replicas of every MoE layer, with per-layer before/after statistics."""

    assignment: np.ndarray  # [L, E] primary device of every expert
    layers: list[ReplicatedLayer]
    grouping: str
    slots: int
    threshold: float
    token_placement: str
    stats: list[dict] = field(default_factory=list)

    def most_skewed(self) -> dict:
        """The per-layer statistics row of the layer whose load was most uneven before replication."""
        return max(self.stats, key=lambda r: r["max_mean_before"])


def balanced_partition(affinity: np.ndarray, num_devices: int, restarts: int = 4, seed: int = 0) -> np.ndarray:
    """[E] device per expert, E/D each, maximising the affinity inside devices (symmetric ``affinity``)."""
    E = affinity.shape[0]
    rng = np.random.default_rng(seed)
    base = np.arange(E) * num_devices // E
    best, best_mass = None, -np.inf
    for start in [base] + [rng.permutation(base) for _ in range(restarts)]:
        row = _swap_search(affinity, start.copy(), num_devices)
        mass = affinity[row[:, None] == row[None, :]].sum()
        if mass > best_mass + 1e-12:
            best, best_mass = row, mass
    assert best is not None  # the first start always improves on -inf
    return best


def _swap_search(A: np.ndarray, row: np.ndarray, D: int, max_iter: int = 10_000) -> np.ndarray:
    """Apply the best improving swap of two experts on different devices until none improves."""
    eye = np.eye(D)
    for _ in range(max_iter):
        S = A @ eye[row]  # [E, D] affinity of e to each device
        own = S[np.arange(len(row)), row]
        # gain of swapping i and j: i joins row[j]'s device and j joins row[i]'s
        gain = S[:, row] - own[:, None] + S[:, row].T - own[None, :] - 2 * A
        gain[row[:, None] == row[None, :]] = -np.inf
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        if gain[i, j] <= 1e-12:
            break
        row[i], row[j] = row[j], row[i]
    return row


def grouping_assignment(
    trace: RoutingTrace, num_devices: int, grouping: str, time_limit: float = 10.0, seed: int = 0
) -> np.ndarray:
    """[L, E] primary placement by the named grouping."""
    if grouping not in GROUPINGS:
        raise PlacementError(f"grouping {grouping!r}; allowed: {', '.join(GROUPINGS)}")
    L, E = trace.num_layers, trace.num_experts
    if grouping in ("contiguous", "round_robin"):
        return baseline_assignment(grouping, L, E, num_devices)
    if grouping == "exflow":
        return place_exflow(trace, num_devices, time_limit=time_limit, seed=seed).assignment
    return np.stack([balanced_partition(coactivation_counts(c, E), num_devices, seed=seed) for c in trace.layers])


def home_devices(num_tokens: int, num_devices: int) -> np.ndarray:
    """[T] the data-parallel device of each token: D contiguous blocks, in token order."""
    return np.arange(num_tokens) * num_devices // max(num_tokens, 1)


def plan_grace(
    trace: RoutingTrace,
    num_devices: int,
    slots: int = 2,
    threshold: float = 1.05,
    grouping: str = "exflow",
    token_placement: str = "home",
    base: np.ndarray | None = None,
    time_limit: float = 10.0,
    seed: int = 0,
) -> GracePlan:
    """Group, replicate and evaluate every MoE layer; ``base`` [L, E] overrides the grouping."""
    if token_placement not in TOKEN_PLACEMENTS:
        raise PlacementError(f"token placement {token_placement!r}; allowed: {', '.join(TOKEN_PLACEMENTS)}")
    if slots < 0 or threshold < 1.0:
        raise PlacementError(
            f"slots {slots} must be >= 0 and threshold {threshold} >= 1 (a factor of the mean device load)"
        )
    E, D = trace.num_experts, num_devices
    check_devices(E, D)
    assignment = grouping_assignment(trace, D, grouping, time_limit, seed) if base is None else np.asarray(base)
    plan = GracePlan(
        assignment=assignment,
        layers=[],
        grouping=grouping if base is None else "given",
        slots=slots,
        threshold=threshold,
        token_placement=token_placement,
    )
    dest = None
    for l, choices in enumerate(trace.layers):
        where = _token_device(trace, dest, l, D, token_placement)
        n = flows(choices, where, E, D)
        bare = ReplicatedLayer(assignment[l], num_devices=D)
        layer = replicate_layer(n, assignment[l], D, slots, threshold)
        before, moved_before = routed_loads(n, bare, threshold)
        after, moved_after = routed_loads(n, layer, threshold)
        dest = route_tokens(choices, where, layer.holders(), threshold)
        plan.layers.append(layer)
        plan.stats.append(
            {
                "layer": trace.moe_layers[l],
                "max_mean_before": imbalance(before),
                "max_mean_after": imbalance(after),
                "remote_before": moved_before / choices.size,
                "remote_after": moved_after / choices.size,
                "replicas": int(layer.extra_slots().sum()),
            }
        )
    return plan


def route_trace(trace: RoutingTrace, plan: GracePlan) -> list[np.ndarray]:
    """[T, k] destination device of every copy of every layer under the plan's replica routing."""
    out, dest = [], None
    for l, choices in enumerate(trace.layers):
        where = _token_device(trace, dest, l, plan.layers[l].num_devices, plan.token_placement)
        dest = route_tokens(choices, where, plan.layers[l].holders(), plan.threshold)
        out.append(dest)
    return out


def _token_device(trace, prev_dest, l, D, token_placement) -> np.ndarray:
    if token_placement == "previous" and prev_dest is not None:
        return prev_dest[:, 0]
    return home_devices(trace.num_tokens, D)


def devices_per_token(choices: np.ndarray, row: np.ndarray) -> float:
    """Mean number of distinct devices a token's k copies go to (what co-activation grouping lowers)."""
    dev = np.sort(row[choices], axis=1)
    return float((1 + (np.diff(dev, axis=1) != 0).sum(axis=1)).mean())
