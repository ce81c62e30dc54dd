"""Exact ExFlow placement for tiny instances, by exhaustive enumeration (the tests' ground truth).

Every layer may take any of the ``S = E! / ((E/D)!)^D`` balanced expert→device maps (its *states*). The
objective is a sum over consecutive layer pairs, so the best sequence of states is found by dynamic
programming over the layers (Viterbi): ``best_l(s') = max_s best_{l-1}(s) + M_l[s, s']`` with
``M_l[s, s']`` the co-located transition mass of states s at l and s' at l+1. That is every assignment
considered (exhaustive), at cost ``L·S²`` instead of ``S^L``. Only for E ≤ 8 or so: S = 2520 at E = 8, D = 4.
"""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np

from locmoe.placement.errors import PlacementError
from locmoe.placement.greedy import load_caps

MAX_STATES = 20000


def balanced_assignments(num_experts: int, num_devices: int) -> np.ndarray:
    """[S, E] every map of E experts onto D devices with exactly E/D experts each, in lexicographic order."""
    if num_experts % num_devices:
        raise PlacementError(f"{num_experts} experts do not divide over {num_devices} devices")
    slots = num_experts // num_devices
    rows: list[tuple] = []

    def extend(prefix: list, left: list) -> None:
        if len(prefix) == num_experts:
            rows.append(tuple(prefix))
            return
        for d in range(num_devices):
            if left[d]:
                left[d] -= 1
                prefix.append(d)
                extend(prefix, left)
                prefix.pop()
                left[d] += 1

    count = _multinomial(num_experts, slots, num_devices)
    if count > MAX_STATES:
        raise PlacementError(
            f"brute force: {count} balanced maps of {num_experts} experts onto {num_devices} "
            f"devices per layer; at most {MAX_STATES} are enumerated (use the ILP)"
        )
    extend([], [slots] * num_devices)
    return np.asarray(rows, dtype=np.int64)


def brute_force_placement(
    weights: list[np.ndarray],
    num_layers: int,
    num_experts: int,
    num_devices: int,
    loads: np.ndarray | None = None,
    load_limit: float | None = None,
) -> np.ndarray:
    """[L, E] an optimal assignment (maximum co-located mass, hence minimum expected hops)."""
    states = balanced_assignments(num_experts, num_devices)
    allowed = [np.ones(len(states), bool) for _ in range(num_layers)]
    if loads is not None and load_limit is not None:
        caps = load_caps(loads, load_limit, num_devices)
        for l in range(num_layers):
            dev = np.stack([np.bincount(s, weights=loads[l], minlength=num_devices) for s in states])
            allowed[l] = dev.max(axis=1) <= caps[l] + 1e-9
            if not allowed[l].any():
                raise PlacementError(
                    f"brute force: no balanced placement of layer {l} keeps every device under "
                    f"{load_limit} x the mean load"
                )
    onehot = np.eye(num_devices)[states]  # [S, E, D]
    value = np.where(allowed[0], 0.0, -np.inf)
    back = []
    for l, w in enumerate(weights):
        # M[s, t] = Σ_d Σ_ij O_s[i, d] W[i, j] O_t[j, d]
        m = np.einsum("sid,ij,tjd->st", onehot, w, onehot, optimize=True)
        total = value[:, None] + m
        back.append(total.argmax(axis=0))
        value = np.where(allowed[l + 1], total.max(axis=0), -np.inf)
    path = [int(value.argmax())]
    for b in reversed(back):
        path.append(int(b[path[-1]]))
    return states[path[::-1]]


def enumerate_placements(weights: list[np.ndarray], num_layers: int, num_experts: int, num_devices: int) -> float:
    """Best co-located mass by plain enumeration of all ``S^L`` combinations (checks the DP; tiny only)."""
    states = balanced_assignments(num_experts, num_devices)
    best = -np.inf
    for combo in itertools.product(range(len(states)), repeat=num_layers):
        a = states[list(combo)]
        mass = sum(w[a[l][:, None] == a[l + 1][None, :]].sum() for l, w in enumerate(weights))
        best = max(best, mass)
    return float(best)


def _multinomial(n: int, part: int, parts: int) -> int:
    return factorial(n) // (factorial(part) ** parts)
