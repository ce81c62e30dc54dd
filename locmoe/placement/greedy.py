"""Greedy ExFlow placement for instances too large for the integer program: block coordinate ascent.

With every other layer fixed, placing layer l is a *transportation problem*: expert j earns
``S[j, d] = Σ_i W_{l-1}[i, j]·1[dev_{l-1}(i) = d] + Σ_m W_l[j, m]·1[dev_{l+1}(m) = d]`` (the co-located
transition mass with both neighbours) on device d, and each device takes exactly E/D experts; replicating
each device E/D times turns it into a linear assignment solved exactly by ``linear_sum_assignment``. Sweeping
the layers never lowers the co-located mass, so the loop stops at a local optimum; several starts
(contiguous, round-robin, seeded random) keep the best. An optional per-device load limit is restored
afterwards by swaps that cost the least co-location.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from locmoe.placement.hops import baseline_assignment, expected_hops


def assign_layer(score: np.ndarray, num_devices: int) -> np.ndarray:
    """[E] device per expert maximising Σ_e score[e, dev(e)] with E/D experts per device; ``score`` [E, D]."""
    E = score.shape[0]
    slots = E // num_devices
    cost = -np.repeat(score, slots, axis=1)  # [E, E]: column c is slot c % slots of device c // slots
    rows, cols = linear_sum_assignment(cost)
    row = np.empty(E, dtype=np.int64)
    row[rows] = cols // slots
    return row


def layer_score(weights: list[np.ndarray], assignment: np.ndarray, l: int, num_devices: int) -> np.ndarray:
    """[E, D] co-located transition mass of each expert of layer l on each device, neighbours fixed."""
    L, E = assignment.shape
    eye = np.eye(num_devices)
    score = np.zeros((E, num_devices))
    if l > 0:
        score += weights[l - 1].T @ eye[assignment[l - 1]]
    if l < L - 1:
        score += weights[l] @ eye[assignment[l + 1]]
    return score


def coordinate_ascent(
    weights: list[np.ndarray], start: np.ndarray, num_devices: int, max_sweeps: int = 50
) -> np.ndarray:
    """Improve ``start`` [L, E]: a forward pass from layer 0, then sweeps until nothing improves."""
    a = start.copy()
    for l in range(1, len(a)):
        a[l] = assign_layer(weights[l - 1].T @ np.eye(num_devices)[a[l - 1]], num_devices)
    best = expected_hops(weights, a)
    for _ in range(max_sweeps):
        for l in range(len(a)):
            a[l] = assign_layer(layer_score(weights, a, l, num_devices), num_devices)
        hops = expected_hops(weights, a)
        if hops > best - 1e-12:
            break
        best = hops
    return a


def greedy_placement(
    weights: list[np.ndarray],
    num_layers: int,
    num_experts: int,
    num_devices: int,
    restarts: int = 4,
    seed: int = 0,
    loads: np.ndarray | None = None,
    load_limit: float | None = None,
) -> np.ndarray:
    """[L, E] the best of coordinate ascent from contiguous, round-robin and ``restarts`` random starts.

    ``loads`` [L, E] and ``load_limit`` (a factor of the mean device load) add the per-device load limit,
    enforced by :func:`repair_loads` (best effort: check the result with ``within_load_limit``).
    """
    rng = np.random.default_rng(seed)
    starts = [baseline_assignment(k, num_layers, num_experts, num_devices) for k in ("contiguous", "round_robin")]
    base = starts[0]
    starts += [np.stack([rng.permutation(row) for row in base]) for _ in range(restarts)]
    best, best_key = None, None
    for s in starts:
        a = coordinate_ascent(weights, s, num_devices) if weights else s
        if loads is not None and load_limit is not None:
            a = repair_loads(weights, a, loads, load_limit, num_devices)
        hops = expected_hops(weights, a)
        feasible = loads is None or load_limit is None or within_load_limit(a, loads, load_limit, num_devices)
        key = (not feasible, hops)
        if best_key is None or key < best_key:
            best, best_key = a, key
    assert best is not None  # starts holds at least the first start
    return best


def load_caps(loads: np.ndarray, load_limit: float, num_devices: int) -> np.ndarray:
    """[L] the most load one device may take per layer: ``load_limit`` × the layer's mean device load."""
    return load_limit * loads.sum(axis=1) / num_devices


def within_load_limit(assignment: np.ndarray, loads: np.ndarray, load_limit: float, num_devices: int) -> bool:
    caps = load_caps(loads, load_limit, num_devices)
    return all(
        np.bincount(a, weights=w, minlength=num_devices).max() <= c + 1e-9 for a, w, c in zip(assignment, loads, caps)
    )


def repair_loads(
    weights: list[np.ndarray],
    assignment: np.ndarray,
    loads: np.ndarray,
    load_limit: float,
    num_devices: int,
    max_swaps: int = 1000,
) -> np.ndarray:
    """Swap experts out of devices over the load cap, each time the swap that lowers the overload and
    loses the least co-located mass; stops when every device fits or no swap helps."""
    a = assignment.copy()
    caps = load_caps(loads, load_limit, num_devices)
    for l in range(len(a)):
        for _ in range(max_swaps):
            dev_load = np.bincount(a[l], weights=loads[l], minlength=num_devices)
            hot = int(dev_load.argmax())
            if dev_load[hot] <= caps[l] + 1e-9:
                break
            swap = _best_swap(weights, a, l, hot, dev_load, loads[l], caps[l], num_devices)
            if swap is None:
                break
            i, j = swap
            a[l, i], a[l, j] = a[l, j], a[l, i]
    return a


def _best_swap(weights, a, l, hot, dev_load, load, cap, num_devices):
    """(i, j): expert i on the hot device and j on another whose swap lowers the pair's larger load;
    swaps that bring both under ``cap`` first, then the least lost co-located mass. None if none helps."""
    score = layer_score(weights, a, l, num_devices)
    on_hot, off_hot = np.flatnonzero(a[l] == hot), np.flatnonzero(a[l] != hot)
    i, j = np.meshgrid(on_hot, off_hot, indexing="ij")
    other = a[l][j]
    delta = load[i] - load[j]
    worst = np.maximum(dev_load[hot] - delta, dev_load[other] + delta)
    ok = (delta > 0) & (worst < dev_load[hot] - 1e-12)
    if not ok.any():
        return None
    loss = score[i, hot] + score[j, other] - score[i, other] - score[j, hot]
    order = np.lexsort((worst[ok], loss[ok], worst[ok] > cap + 1e-9))
    pick = order[0]
    return int(i[ok][pick]), int(j[ok][pick])
