"""Replication of the hottest experts under a memory budget (GRACE-MoE's dynamic replication; DeepSeek
EPLB's redundant experts).

Each device has ``slots`` extra expert slots (the memory budget). Greedy, one replica at a time: route the
layer's copies with :func:`locmoe.placement.replica_routing.route_counts`, take the most loaded device, and
try a replica of each of its busiest experts on each of the least-loaded devices that has a free slot and
lacks that expert; keep the candidate that lowers the maximum device load most (ties: fewer copies leave
their device). Stop when the budget is spent, the layer is balanced to ``stop_at`` × mean, or no replica
helps. EPLB instead replicates by load per replica and packs replicas without regard to where tokens are;
routing-aware evaluation is what lets a replica near the traffic win here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from locmoe.placement.replica_routing import route_counts


@dataclass
class ReplicatedLayer:
    """One MoE layer's experts: the primary device of each, plus replica devices.

    Attributes:
        primary: [E] device of each expert's primary copy (the ExFlow/grouping placement).
        replicas: E lists of extra devices holding a copy.
        num_devices: D.
    """

    primary: np.ndarray
    replicas: list = field(default_factory=list)
    num_devices: int = 1

    def __post_init__(self):
        self.primary = np.asarray(self.primary, dtype=np.int64)
        if not self.replicas:
            self.replicas = [[] for _ in self.primary]

    def holders(self) -> np.ndarray:
        """[E, D] True where a device holds the expert."""
        h = np.zeros((len(self.primary), self.num_devices), dtype=bool)
        h[np.arange(len(self.primary)), self.primary] = True
        for e, devs in enumerate(self.replicas):
            h[e, devs] = True
        return h

    def extra_slots(self) -> np.ndarray:
        """[D] replica slots used on each device."""
        return np.bincount([d for devs in self.replicas for d in devs], minlength=self.num_devices)


def flows(expert_ids: np.ndarray, token_device: np.ndarray, num_experts: int, num_devices: int) -> np.ndarray:
    """[D, E] copies on each device for each expert; ``expert_ids`` [T, k], ``token_device`` [T]."""
    s = np.repeat(np.asarray(token_device, dtype=np.int64), expert_ids.shape[1])
    flat = s * num_experts + expert_ids.ravel().astype(np.int64)
    return np.bincount(flat, minlength=num_devices * num_experts).reshape(num_devices, num_experts)


def routed_loads(n: np.ndarray, layer: ReplicatedLayer, threshold: float) -> tuple[np.ndarray, int]:
    """([D] copies served per device, copies sent off their device) under replica routing."""
    A = route_counts(n, layer.holders(), threshold)
    D = layer.num_devices
    moved = int(A.sum() - A[np.arange(D), :, np.arange(D)].sum())
    return A.sum(axis=(0, 1)).astype(np.float64), moved


def replicate_layer(
    n: np.ndarray,
    primary: np.ndarray,
    num_devices: int,
    slots: int,
    threshold: float = 1.05,
    stop_at: float = 1.02,
    experts_tried: int = 4,
    devices_tried: int = 4,
) -> ReplicatedLayer:
    """Add up to ``slots`` replicas per device to balance the copies ``n`` [D, E] over the devices."""
    layer = ReplicatedLayer(primary, num_devices=num_devices)
    if slots <= 0 or n.sum() == 0:
        return layer
    mean = n.sum() / num_devices
    loads, moved = routed_loads(n, layer, threshold)
    for _ in range(slots * num_devices):
        if loads.max() <= stop_at * mean:
            break
        best = _best_replica(n, layer, loads, slots, threshold, experts_tried, devices_tried)
        if best is None or (best[0], best[1]) >= (loads.max(), moved):
            break
        _, moved, e, d = best
        layer.replicas[e].append(d)
        loads, moved = routed_loads(n, layer, threshold)
    return layer


def _best_replica(n, layer, loads, slots, threshold, experts_tried, devices_tried):
    """(max load, moved copies, expert, device) of the best single replica to add, or None."""
    hot = int(loads.argmax())
    holders = layer.holders()
    free = layer.extra_slots() < slots
    A = route_counts(n, holders, threshold)
    served_on_hot = A[:, :, hot].sum(axis=0)  # [E] copies of each expert served on hot
    experts = [int(e) for e in np.argsort(-served_on_hot, kind="stable")[:experts_tried] if served_on_hot[e] > 0]
    best = None
    for e in experts:
        cands = [int(d) for d in np.argsort(loads, kind="stable") if free[d] and not holders[e, d]]
        for d in cands[:devices_tried]:
            layer.replicas[e].append(d)
            new_loads, moved = routed_loads(n, layer, threshold)
            layer.replicas[e].pop()
            key = (float(new_loads.max()), moved, e, d)
            if best is None or key < best:
                best = key
    return best
