"""Cost model of one rank's expert layer: grouped GEMM vs padded dense (batched) GEMM for a given per-expert
load, and the time to move rows (all-to-all, device copies). EPS-MoE §3: the grouped kernel's time follows
the rows it has (plus a per-expert cost), the dense kernel's follows ``experts x largest load`` — so balanced
loads can favour the dense kernel and skewed loads the grouped one, by an amount only the device knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from locmoe.inference.errors import InferenceError
from locmoe.inference.profile import DeviceProfile, GemmFit

KERNELS = ("grouped", "dense")


def ffn_flops_per_row(d_model: int, d_expert: int, activation: str = "swiglu") -> float:
    """Forward FLOPs of one expert FFN on one row (2 per multiply-add; SwiGLU has 3 matrices)."""
    return 2.0 * d_model * d_expert * (3 if activation == "swiglu" else 2)


def _loads(loads: Sequence[int] | np.ndarray) -> np.ndarray:
    a = np.asarray(loads, dtype=np.float64)  # expected loads (planning before routing) are fractional
    if a.ndim != 1 or a.size == 0 or (a < 0).any() or not np.isfinite(a).all():
        raise InferenceError(f"expert loads must be a non-empty list of counts >= 0, got {a.tolist()}")
    return a


def grouped_features(loads, flops_per_row: float, tile_rows: int) -> np.ndarray:
    """[1, experts with rows, executed FLOPs] of the grouped GEMM (rows rounded up to the tile)."""
    a = _loads(loads)
    rows = np.ceil(a / tile_rows) * tile_rows
    return np.array([1.0, float((a > 0).sum()), float(rows.sum()) * flops_per_row])


def dense_features(loads, flops_per_row: float) -> np.ndarray:
    """[1, experts, executed FLOPs] of the padded batched GEMM: every expert padded to the largest load."""
    a = _loads(loads)
    return np.array([1.0, float(a.size), float(a.size * a.max()) * flops_per_row])


def gemm_seconds(fit: GemmFit, features: np.ndarray) -> float:
    if features[2] == 0:
        return 0.0  # no rows: the kernel is skipped
    return float(np.dot([fit.intercept_s, fit.per_expert_s, fit.s_per_flop], features))


def kernel_seconds(
    profile: DeviceProfile, kernel: str, loads, d_model: int, d_expert: int, activation: str = "swiglu"
) -> float:
    """Predicted time of ``kernel`` over the rows ``loads`` [E_local] of one rank."""
    fpr = ffn_flops_per_row(d_model, d_expert, activation)
    if kernel == "grouped":
        return gemm_seconds(profile.grouped, grouped_features(loads, fpr, profile.grouped.tile_rows))
    if kernel == "dense":
        return gemm_seconds(profile.dense, dense_features(loads, fpr))
    raise InferenceError(f"expert kernel {kernel!r} is not one of {KERNELS}")


@dataclass(frozen=True)
class KernelChoice:
    kernel: str  # "grouped" or "dense"
    grouped_s: float  # predicted time of each
    dense_s: float

    @property
    def seconds(self) -> float:
        return min(self.grouped_s, self.dense_s)


def choose_kernel(
    profile: DeviceProfile, loads, d_model: int, d_expert: int, activation: str = "swiglu"
) -> KernelChoice:
    """The faster expert kernel for these loads; ties go to grouped (no padding memory)."""
    g = kernel_seconds(profile, "grouped", loads, d_model, d_expert, activation)
    dn = kernel_seconds(profile, "dense", loads, d_model, d_expert, activation)
    return KernelChoice("dense" if dn < g else "grouped", g, dn)


def balance_breakeven(
    profile: DeviceProfile, experts: int, rows_per_expert: int, d_model: int, d_expert: int, activation: str = "swiglu"
) -> float:
    """How much larger than the mean the largest load may grow before grouped beats dense (>= 1), or 0
    when grouped wins even at perfect balance — a one-number summary of a profile for reports."""
    mean = np.full(experts, rows_per_expert)
    if choose_kernel(profile, mean, d_model, d_expert, activation).kernel == "grouped":
        return 0.0
    lo, hi = 1.0, 64.0
    for _ in range(40):
        mid = (lo + hi) / 2
        skew = mean.copy()
        skew[0] = int(round(rows_per_expert * mid))
        if choose_kernel(profile, skew, d_model, d_expert, activation).kernel == "dense":
            lo = mid
        else:
            hi = mid
    return lo
