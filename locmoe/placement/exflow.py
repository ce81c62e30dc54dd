"""ExFlow placement: the integer program that places every layer's experts on devices so that tokens
stay on one device from one MoE layer to the next (arXiv 2401.08383).

Integer program (L layers, E experts, D devices, g = E/D, W_p the normalised transition counts of layer
pair p = (l, l+1), see :mod:`locmoe.placement.hops`)::

    x[l, e, d] ∈ {0, 1}            expert e of layer l sits on device d
    y[p, i, j, d] ∈ [0, 1]         i (layer l) and j (layer l+1) both sit on d: y = x[l, i, d] · x[l+1, j, d]
    maximise   Σ_p Σ_ij W_p[i, j] Σ_d y[p, i, j, d]         (co-located mass; hops = 1 − mass / (L − 1))
    subject to Σ_d x[l, e, d] = 1,  Σ_e x[l, e, d] = g                       (one device each, g per device)
               y ≤ x[l, i, d],  y ≤ x[l+1, j, d],  y ≥ x[l, i, d] + x[l+1, j, d] − 1   (McCormick: y is
               exactly the product when x is binary)
               Σ_j y[p, i, j, d] ≤ g · x[l, i, d],  Σ_i y[p, i, j, d] ≤ g · x[l+1, j, d]   (valid: a device
               holds g experts per layer; they tighten the LP bound from "everything co-located" to
               "each expert keeps its g best successors")
               Σ_e load[l, e] · x[l, e, d] ≤ cap_l                            (optional load limit)
               x[0, e, d] = 0 for d > e                                        (devices are interchangeable:
               number them in order of their smallest layer-0 expert)

y exists only for pairs with W_p[i, j] > 0. Solved by ``scipy.optimize.milp`` (HiGHS) under a time limit.
The answer is the better of the solver's incumbent and the greedy placement (:mod:`.greedy`), which is
also the fallback when the program is too large or the solver stops without a solution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from locmoe.placement.brute_force import brute_force_placement
from locmoe.placement.errors import PlacementError
from locmoe.placement.greedy import greedy_placement, load_caps, within_load_limit
from locmoe.placement.hops import check_devices, expected_hops, pair_weights
from locmoe.placement.trace import RoutingTrace

METHODS = ("auto", "ilp", "greedy", "brute_force")
CUTOFF_TOL = 1e-7  # co-located mass the ILP must gain over greedy to count (above HiGHS's feasibility tolerance)


@dataclass(kw_only=True)
class PlacementPlan:
    """An ExFlow placement and how it was found.

    Attributes:
        assignment: [L, E] device of every expert of every MoE layer.
        method: the solver whose answer this is: ``ilp``, ``greedy`` or ``brute_force``.
        status: ``optimal`` (proven), ``time_limit`` (solver stopped with an incumbent), ``heuristic``.
        hops: expected cross-device hops per token per layer transition.
        hops_lower_bound: the solver's bound (no placement does better), when it ran.
        candidates: hops of each solver tried (``ilp`` absent when it found no solution).
    """

    assignment: np.ndarray
    method: str
    status: str
    hops: float
    solve_seconds: float
    hops_lower_bound: float | None = None
    candidates: dict = field(default_factory=dict)


def ilp_size(weights: list[np.ndarray], num_layers: int, num_experts: int, num_devices: int) -> int:
    """Variables of the integer program: L·E·D placements + D per nonzero transition pair."""
    return num_layers * num_experts * num_devices + num_devices * sum(int((w > 0).sum()) for w in weights)


def place_exflow(
    trace: RoutingTrace,
    num_devices: int,
    method: str = "auto",
    time_limit: float = 30.0,
    load_limit: float | None = None,
    seed: int = 0,
    max_ilp_vars: int = 50_000,
) -> PlacementPlan:
    """Place every MoE layer's experts on ``num_devices`` devices to minimise expected hops.

    ``method``: ``ilp`` (HiGHS, best of it and greedy), ``greedy``, ``brute_force`` (tiny only), ``auto``
    (ilp when it has at most ``max_ilp_vars`` variables, else greedy). ``load_limit``: each device's load
    (token copies) at most this factor of the layer's mean device load.
    """
    if method not in METHODS:
        raise PlacementError(f"placement method {method!r}; allowed: {', '.join(METHODS)}")
    L, E, D = trace.num_layers, trace.num_experts, num_devices
    check_devices(E, D)
    if load_limit is not None and load_limit < 1.0:
        raise PlacementError(f"load limit {load_limit}: must be >= 1 (a factor of the mean device load)")
    weights, loads = pair_weights(trace), trace.expert_load().astype(np.float64)
    start = time.perf_counter()
    if method == "brute_force":
        a = brute_force_placement(weights, L, E, D, loads, load_limit)
        return _plan(a, "brute_force", "optimal", weights, start, {"brute_force": expected_hops(weights, a)})
    greedy = greedy_placement(weights, L, E, D, seed=seed, loads=loads, load_limit=load_limit)
    candidates = {"greedy": expected_hops(weights, greedy)}
    if method == "greedy" or (method == "auto" and ilp_size(weights, L, E, D) > max_ilp_vars):
        return _plan(greedy, "greedy", "heuristic", weights, start, candidates)
    greedy_ok = load_limit is None or within_load_limit(greedy, loads, load_limit, D)
    # the greedy answer as a cutoff: the solver only looks for strictly better placements, and an
    # infeasible program then proves the greedy one optimal (to CUTOFF_TOL of co-located mass)
    cutoff = colocated_mass(weights, greedy) + CUTOFF_TOL if greedy_ok else None
    ilp, status, bound = solve_ilp(weights, L, E, D, time_limit, loads, load_limit, cutoff)
    if ilp is not None:
        candidates["ilp"] = expected_hops(weights, ilp)
    if ilp is None and not greedy_ok and status == "infeasible":
        raise PlacementError(
            f"load limit {load_limit}: no balanced placement keeps every device under "
            f"{load_limit} x the mean load; raise it or drop it"
        )
    use_ilp = ilp is not None and (not greedy_ok or candidates["ilp"] <= candidates["greedy"] + 1e-12)
    if use_ilp:
        plan = _plan(ilp, "ilp", status, weights, start, candidates)
    else:
        proven = cutoff is not None and status == "infeasible"
        plan = _plan(greedy, "greedy", "optimal" if proven else "heuristic", weights, start, candidates)
        bound = candidates["greedy"] - CUTOFF_TOL / max(L - 1, 1) if proven else bound
    # the solver's bound covers the placements better than the cutoff; greedy's own covers the rest
    plan.hops_lower_bound = None if bound is None else min(bound, candidates["greedy"])
    return plan


def colocated_mass(weights: list[np.ndarray], assignment: np.ndarray) -> float:
    """Σ_p Σ_ij W_p[i, j]·1[same device]: the program's objective (= (L − 1)·(1 − hops))."""
    return float(sum(w[assignment[l][:, None] == assignment[l + 1][None, :]].sum() for l, w in enumerate(weights)))


def _plan(a, method, status, weights, start, candidates) -> PlacementPlan:
    return PlacementPlan(
        assignment=a,
        method=method,
        status=status,
        hops=expected_hops(weights, a),
        solve_seconds=time.perf_counter() - start,
        candidates=candidates,
    )


def solve_ilp(
    weights: list[np.ndarray],
    num_layers: int,
    num_experts: int,
    num_devices: int,
    time_limit: float,
    loads: np.ndarray | None = None,
    load_limit: float | None = None,
    min_mass: float | None = None,
) -> tuple[np.ndarray | None, str, float | None]:
    """(assignment [L, E] or None, status, lower bound on hops or None) of the program above;
    ``min_mass``: only placements with at least this co-located mass count (a cutoff)."""
    L, E, D = num_layers, num_experts, num_devices
    g = E // D
    nx = L * E * D
    xid = np.arange(nx).reshape(L, E, D)
    pairs = [np.nonzero(w > 0) for w in weights]
    sizes = [len(i) * D for i, _ in pairs]
    offsets = nx + np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    c = np.zeros(n)
    rows = _Rows(n)
    for l in range(L):
        for e in range(E):  # Σ_d x = 1
            rows.add(xid[l, e], 1.0, 1.0, 1.0)
        for d in range(D):  # Σ_e x = g
            rows.add(xid[l, :, d], 1.0, g, g)
    for p, (ii, jj) in enumerate(pairs):
        y = offsets[p] + np.arange(len(ii) * D).reshape(len(ii), D)  # [pairs, D]
        c[y] = -np.repeat(weights[p][ii, jj], D).reshape(len(ii), D)
        xa, xb = xid[p][ii], xid[p + 1][jj]  # [pairs, D]
        rows.pairwise(y, xa, -1.0, -np.inf, 0.0)  # y − x[l, i, d] ≤ 0
        rows.pairwise(y, xb, -1.0, -np.inf, 0.0)  # y − x[l+1, j, d] ≤ 0
        rows.mccormick_low(y, xa, xb)  # x + x − y ≤ 1
        rows.aggregate(y, ii, xid[p], g)  # Σ_j y[i, j, d] ≤ g x[l, i, d]
        rows.aggregate(y, jj, xid[p + 1], g)  # Σ_i y[i, j, d] ≤ g x[l+1, j, d]
    if loads is not None and load_limit is not None:
        for l, cap in enumerate(load_caps(loads, load_limit, D)):
            for d in range(D):
                rows.add(xid[l, :, d], loads[l], -np.inf, cap)
    if min_mass is not None:
        rows.add(np.arange(nx, n), -c[nx:], min_mass, np.inf)
    upper = np.ones(n)
    upper[xid[0][np.triu_indices(E, 1, D)]] = 0.0  # x[0, e, d] = 0 for d > e
    integrality = np.zeros(n)
    integrality[:nx] = 1
    res = milp(
        c,
        constraints=rows.constraint(),
        integrality=integrality,
        bounds=Bounds(np.zeros(n), upper),  # pyright: ignore[reportArgumentType]  # array bounds: documented, typed float
        options={"time_limit": float(time_limit), "disp": False},
    )
    bound = getattr(res, "mip_dual_bound", None)
    hops_bound = None if bound is None or not np.isfinite(bound) else max(0.0, 1.0 + bound / max(L - 1, 1))
    status = {0: "optimal", 1: "time_limit", 2: "infeasible"}.get(res.status, f"status {res.status}")
    if res.x is None:
        return None, status, hops_bound
    a = res.x[:nx].reshape(L, E, D).argmax(axis=2)
    return a.astype(np.int64), status, hops_bound


class _Rows:
    """Accumulates sparse constraint rows lo ≤ A x ≤ hi."""

    def __init__(self, n: int):
        self.num_vars, self.row_ids, self.col_ids, self.coefs, self.lo, self.hi = n, [], [], [], [], []

    def _push(self, row_ids, cols, vals, lo, hi, count):
        base = len(self.lo)
        self.row_ids.append(np.asarray(row_ids, dtype=np.int64).ravel() + base)
        self.col_ids.append(np.asarray(cols, dtype=np.int64).ravel())
        self.coefs.append(np.broadcast_to(np.asarray(vals, dtype=np.float64), np.shape(cols)).ravel())
        self.lo += [lo] * count
        self.hi += [hi] * count

    def add(self, cols, vals, lo, hi):
        """One row: Σ vals · x[cols] in [lo, hi]."""
        cols = np.asarray(cols)
        self._push(np.zeros(cols.size), cols, vals, lo, hi, 1)

    def pairwise(self, y, x, coef, lo, hi):
        """One row per element: y + coef · x in [lo, hi]."""
        k = y.size
        ids = np.arange(k)
        self._push(
            np.concatenate([ids, ids]),
            np.concatenate([y.ravel(), x.ravel()]),
            np.concatenate([np.ones(k), np.full(k, coef)]),
            lo,
            hi,
            k,
        )

    def mccormick_low(self, y, xa, xb):
        k = y.size
        ids = np.arange(k)
        self._push(
            np.concatenate([ids, ids, ids]),
            np.concatenate([xa.ravel(), xb.ravel(), y.ravel()]),
            np.concatenate([np.ones(2 * k), -np.ones(k)]),
            -np.inf,
            1.0,
            k,
        )

    def aggregate(self, y, owner, xid_layer, g):
        """Per (expert e, device d): Σ_{pairs with owner e} y[pair, d] − g · x[e, d] ≤ 0."""
        E, D = xid_layer.shape
        row_of = owner[:, None] * D + np.arange(D)[None, :]  # [pairs, D] row id
        self._push(
            np.concatenate([row_of.ravel(), np.arange(E * D)]),
            np.concatenate([y.ravel(), xid_layer.ravel()]),
            np.concatenate([np.ones(y.size), np.full(E * D, -float(g))]),
            -np.inf,
            0.0,
            E * D,
        )

    def constraint(self) -> LinearConstraint:
        entries = (np.concatenate(self.row_ids), np.concatenate(self.col_ids))
        A = sparse.csr_matrix((np.concatenate(self.coefs), entries), shape=(len(self.lo), self.num_vars))
        return LinearConstraint(A, np.asarray(self.lo), np.asarray(self.hi))  # pyright: ignore[reportArgumentType]  # array bounds: documented, typed float
