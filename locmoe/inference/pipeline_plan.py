"""The expert pipeline's schedule and its predicted time (EPS-MoE §4).

A layer's routed rows are split into n chunks. Each chunk has three stages: dispatch all-to-all (D),
expert compute (X), combine all-to-all (C). Communication runs on one stream in a fixed order, compute on
another; X_i needs D_i, C_i needs X_i. The EPS order ``D0 D1 C0 D2 C1 D3 ... C_{n-1}`` overlaps X_i with
C_{i-1} and D_{i+1}; ``dispatch_first`` (``D0 .. D_{n-1} C0 .. C_{n-1}``) feeds compute sooner but holds
every combine back. Both are simulated; the runtime issues exactly the order chosen here.

More chunks hide more communication but each pays the all-to-all latency, the kernels' fixed costs and
smaller, less efficient GEMMs — which is why n comes from the calibrated model, not a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from locmoe.inference.cost_model import choose_kernel
from locmoe.inference.errors import InferenceError
from locmoe.inference.profile import DeviceProfile

ORDERS = ("interleaved", "dispatch_first")
CHUNK_CANDIDATES = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class ChunkCost:
    dispatch_s: float
    compute_s: float
    combine_s: float


@dataclass(frozen=True)
class PipelinePlan:
    chunks: int
    order: str  # one of ORDERS
    predicted_s: float  # pipelined time of the expert stage (dispatch .. combine)
    serial_s: float  # the same chunks run one stage after another
    costs: tuple  # ChunkCost per chunk


def comm_order(n: int, order: str) -> list[tuple[str, int]]:
    """The communication stream's ops, ("D", i) / ("C", i), in issue order."""
    if order == "dispatch_first":
        return [("D", i) for i in range(n)] + [("C", i) for i in range(n)]
    if order != "interleaved":
        raise InferenceError(f"pipeline order {order!r} is not one of {ORDERS}")
    ops = [("D", 0)] + ([("D", 1)] if n > 1 else [])
    for i in range(n):
        ops.append(("C", i))
        if i + 2 < n:
            ops.append(("D", i + 2))
    return ops


def simulate(costs: Sequence[ChunkCost], order: str = "interleaved") -> float:
    """Finish time of the last combine: two in-order streams (comm, compute) with X_i after D_i and C_i after
    X_i; compute runs chunks in order."""
    n = len(costs)
    d_end, x_end = [0.0] * n, [0.0] * n
    comm = comp = 0.0
    next_x = 0
    for kind, i in comm_order(n, order):
        if kind == "D":
            comm = comm + costs[i].dispatch_s
            d_end[i] = comm
            continue
        while next_x <= i:  # compute catches up to chunk i (its dispatches are all issued)
            comp = max(comp, d_end[next_x]) + costs[next_x].compute_s
            x_end[next_x] = comp
            next_x += 1
        comm = max(comm, x_end[i]) + costs[i].combine_s
    return comm


def serial(costs: Sequence[ChunkCost]) -> float:
    return sum(c.dispatch_s + c.compute_s + c.combine_s for c in costs)


def chunk_costs(
    profile: DeviceProfile, counts: np.ndarray, d_model: int, d_expert: int, activation: str, elem_bytes: int
) -> list[ChunkCost]:
    """Per-chunk stage times of the whole EP group from ``counts`` [W src, n, W dst, E_local] (rows from each
    source rank to each destination's local experts, per chunk). A stage lasts as long as its slowest rank."""
    counts = np.asarray(counts)
    if counts.ndim != 4 or counts.shape[0] != counts.shape[2]:
        raise InferenceError(f"counts must be [W, chunks, W, E_local], got shape {counts.shape}")
    W, n = counts.shape[0], counts.shape[1]
    row = d_model * elem_bytes
    off_diag = ~np.eye(W, dtype=bool)
    out = []
    for c in range(n):
        S = counts[:, c].sum(axis=-1)  # [src, dst]
        peer = np.where(off_diag, S, 0)
        moved = np.maximum(peer.sum(axis=1), peer.sum(axis=0)).max() * row
        a2a = 0.0 if W == 1 or moved == 0 else _a2a(profile).seconds(moved)
        compute = 0.0
        for r in range(W):
            loads = counts[:, c, r, :].sum(axis=0)
            if loads.sum() == 0:
                continue
            k = choose_kernel(profile, loads, d_model, d_expert, activation).seconds
            # the receive buffer is reordered expert-major before and back after the experts
            perm = 2 * profile.copy.seconds(loads.sum() * row) if W > 1 else 0.0
            compute = max(compute, k + perm)
        out.append(ChunkCost(a2a, compute, a2a))
    return out


def _a2a(profile: DeviceProfile):
    if profile.all_to_all is None:
        raise InferenceError(
            f"the calibration profile of {profile.device} has no all-to-all measurement (it "
            "was made in one process); calibrate under torchrun with the serving world size"
        )
    return profile.all_to_all


def expected_counts(
    tokens_per_rank: Sequence[int],
    top_k: int,
    experts_per_rank: int,
    chunks: int,
    previous: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Counts [W, n, W, E_local] to plan with before routing: the previous batch's routing shares of this
    layer (``previous`` [W, W, E_local]) scaled to these token counts, or uniform routing; each chunk an
    equal share."""
    T = np.asarray(tokens_per_rank, dtype=np.float64)
    W = T.size
    if previous is None:
        share = np.full((W, W, experts_per_rank), 1.0 / (W * experts_per_rank))
    else:
        prev = np.asarray(previous, dtype=np.float64)
        row = prev.sum(axis=(1, 2), keepdims=True)
        share = np.where(row > 0, prev / np.maximum(row, 1), 1.0 / (W * experts_per_rank))
    per_chunk = share * (T * top_k / chunks)[:, None, None]
    return np.repeat(per_chunk[:, None], chunks, axis=1)


def plan_pipeline(
    profile: DeviceProfile,
    counts_for,
    d_model: int,
    d_expert: int,
    activation: str,
    elem_bytes: int,
    candidates: Sequence[int] = CHUNK_CANDIDATES,
    orders: Sequence[str] = ORDERS,
) -> PipelinePlan:
    """The chunk count and order with the least predicted time; ``counts_for(n)`` gives the counts of n
    chunks. Ties go to fewer chunks (fewer launches, same result)."""
    best: Optional[PipelinePlan] = None
    for n in sorted(set(candidates)):
        if n < 1:
            raise InferenceError(f"chunk counts must be >= 1, got {n}")
        costs = chunk_costs(profile, counts_for(n), d_model, d_expert, activation, elem_bytes)
        for order in orders if n > 1 else orders[:1]:
            plan = PipelinePlan(n, order, simulate(costs, order), serial(costs), tuple(costs))
            if best is None or plan.predicted_s < best.predicted_s * (1 - 1e-9):
                best = plan
    assert best is not None, "no chunk count to plan for (candidates is empty)"
    return best
