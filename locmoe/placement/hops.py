"""What a placement costs on a trace: expected cross-device hops between consecutive MoE layers, the
context-coherent fraction, and per-device loads.

An *assignment* is an int array ``[L, E]``: the device of every expert of every MoE layer.

- **Hop rate** of layer pair (l, l+1): ``h_l = Σ_ij W_l[i, j] · 1[dev_l(i) ≠ dev_{l+1}(j)]`` with
  ``W_l = C_l / (T·k²)`` the normalised transition counts (:mod:`locmoe.placement.affinity`): the
  probability that a (choice at l, choice at l+1) pair of a random token crosses devices. The expected
  hops of a placement is the mean of ``h_l`` over the L - 1 pairs (per token per layer transition); with
  no affinity any balanced placement gives about 1 - 1/D.
- **Context-coherent fraction**: the share of next-layer copies (token t, choice b at l+1) whose device
  already holds one of t's experts at layer l. With context-coherent expert parallelism (ExFlow: every
  device keeps every token's context) such a copy is computed where the token already is, with no
  all-to-all; the rest take the layer's single all-to-all.
"""

from __future__ import annotations

import numpy as np

from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.placement.affinity import affinity_counts
from locmoe.placement.errors import PlacementError
from locmoe.placement.trace import RoutingTrace


def pair_weights(trace: RoutingTrace) -> list[np.ndarray]:
    """[E, E] per layer pair: transition counts normalised to sum to 1 (a token's k² pairs share 1/T)."""
    return [c / max(c.sum(), 1.0) for c in affinity_counts(trace)]


def check_assignment(assignment: np.ndarray, num_devices: int, num_experts: int | None = None) -> np.ndarray:
    """[L, E] int64; every device holds exactly E/D experts of every layer."""
    a = np.asarray(assignment, dtype=np.int64)
    if a.ndim != 2 or (num_experts is not None and a.shape[1] != num_experts):
        raise PlacementError(f"assignment of shape {a.shape}; expected [layers, {num_experts or 'E'}]")
    E = a.shape[1]
    if E % num_devices:
        raise PlacementError(f"{E} experts do not divide over {num_devices} devices")
    for l, row in enumerate(a):
        counts = np.bincount(row, minlength=num_devices)
        if len(counts) > num_devices or row.min() < 0 or (counts != E // num_devices).any():
            raise PlacementError(
                f"assignment layer {l} gives devices {counts.tolist()} experts; each of the "
                f"{num_devices} devices must hold {E // num_devices}"
            )
    return a


def hops_per_pair(weights: list[np.ndarray], assignment: np.ndarray) -> np.ndarray:
    """[L - 1] hop rate h_l of every consecutive layer pair."""
    out = np.zeros(len(weights))
    for l, w in enumerate(weights):
        same = assignment[l][:, None] == assignment[l + 1][None, :]
        out[l] = w[~same].sum()
    return out


def expected_hops(weights: list[np.ndarray], assignment: np.ndarray) -> float:
    """Mean hop rate over the layer pairs (0 when the trace has a single MoE layer)."""
    return float(hops_per_pair(weights, assignment).mean()) if weights else 0.0


def node_hops(weights: list[np.ndarray], assignment: np.ndarray, devices_per_node: int) -> float:
    """Like :func:`expected_hops` but counting only pairs whose devices sit on different nodes."""
    return expected_hops(weights, assignment // devices_per_node)


def coherent_fraction(trace: RoutingTrace, assignment: np.ndarray) -> float:
    """Share of next-layer copies computed on a device that already holds one of the token's experts."""
    if trace.num_layers < 2 or trace.num_tokens == 0:
        return 1.0
    hits = 0
    for l in range(trace.num_layers - 1):
        here = assignment[l][trace.layers[l]]  # [T, k] devices of the token's layer-l experts
        there = assignment[l + 1][trace.layers[l + 1]]  # [T, k] devices of its layer-(l+1) experts
        hits += (there[:, :, None] == here[:, None, :]).any(axis=2).sum()
    return float(hits / ((trace.num_layers - 1) * trace.layers[0].size))


def check_devices(num_experts: int, num_devices: int) -> None:
    """Every device must hold the same number of experts of each layer (the weight layout of training)."""
    if num_devices < 1 or num_experts % num_devices:
        raise PlacementError(
            f"--devices {num_devices}: the {num_experts} experts of each layer must divide "
            f"evenly over the devices (a divisor of {num_experts})"
        )


def baseline_assignment(kind: str, num_layers: int, num_experts: int, num_devices: int) -> np.ndarray:
    """[L, E] the training topology's fixed maps (``contiguous`` or ``round_robin``) on every layer."""
    if kind not in ("contiguous", "round_robin"):
        raise PlacementError(f"baseline placement {kind!r}; allowed: contiguous, round_robin")
    check_devices(num_experts, num_devices)
    row = getattr(ExpertPlacement, kind)(num_experts, Topology(1, num_devices)).rank_array
    return np.tile(row, (num_layers, 1))


def device_loads(load: np.ndarray, row: np.ndarray, num_devices: int) -> np.ndarray:
    """[D] copies each device serves when every copy goes to the expert's (only) device ``row`` [E]."""
    return np.bincount(row, weights=load, minlength=num_devices)


def imbalance(loads: np.ndarray) -> float:
    """max / mean of per-device loads (1 = perfectly balanced)."""
    mean = loads.mean()
    return float(loads.max() / mean) if mean > 0 else 1.0
