"""Fit a :class:`DeviceProfile` from measurements (the measuring itself is the backend's job).

Each cost is linear in a few features, so each fit is a non-negative least squares on the measured times,
weighted by 1/time: a 20 µs point matters as much, relatively, as a 20 ms one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy.optimize import nnls

from locmoe.inference.cost_model import dense_features, ffn_flops_per_row, gemm_seconds, grouped_features
from locmoe.inference.errors import ProfileError
from locmoe.inference.profile import DeviceProfile, GemmFit, LinkFit


@dataclass
class KernelSample:
    """One timed call of an expert kernel: per-expert loads [E_local] and its time."""

    loads: list
    seconds: float


@dataclass
class LinkSample:
    nbytes: float
    seconds: float


@dataclass(kw_only=True)
class Measurements:
    """What the backend measured on one device (and, for all_to_all, among ``world_size`` ranks)."""

    device: str
    dtype: str
    d_model: int
    d_expert: int
    activation: str
    grouped: list = field(default_factory=list)  # KernelSample
    dense: list = field(default_factory=list)  # KernelSample
    copy: list = field(default_factory=list)  # LinkSample
    all_to_all: list = field(default_factory=list)  # LinkSample (empty in one process)
    world_size: int = 1
    tile_rows: int = 1


def _nnls(X: np.ndarray, t: np.ndarray) -> np.ndarray:
    w = 1.0 / t
    coef, _ = nnls(X * w[:, None], t * w)
    return coef


def _rel_error(pred: np.ndarray, t: np.ndarray) -> float:
    return float(np.median(np.abs(pred - t) / t))


def _fit_gemm(samples: list, name: str, feats, tile_rows: int) -> tuple[GemmFit, float]:
    if len(samples) < 3:
        raise ProfileError(f"calibration: {len(samples)} {name} samples; at least 3 are needed to fit 3 coefficients")
    X = np.stack([feats(s.loads) for s in samples])
    t = np.array([s.seconds for s in samples], dtype=np.float64)
    c = _nnls(X, t)
    if c[2] <= 0:
        raise ProfileError(
            f"calibration: the {name} times do not grow with FLOPs ({t.tolist()}); measure larger batches"
        )
    fit = GemmFit(float(c[0]), float(c[1]), float(c[2]), tile_rows)
    return fit, _rel_error(np.array([gemm_seconds(fit, x) for x in X]), t)


def _fit_link(samples: list, name: str) -> tuple[LinkFit, float]:
    if len(samples) < 2:
        raise ProfileError(f"calibration: {len(samples)} {name} samples; at least 2 sizes are needed")
    b = np.array([s.nbytes for s in samples], dtype=np.float64)
    t = np.array([s.seconds for s in samples], dtype=np.float64)
    c = _nnls(np.stack([np.ones_like(b), b], axis=1), t)
    if c[1] <= 0:
        raise ProfileError(
            f"calibration: the {name} times do not grow with bytes ({t.tolist()}); measure larger messages"
        )
    fit = LinkFit(float(c[0]), float(c[1]))
    return fit, _rel_error(np.array([fit.seconds(x) for x in b]), t)


def fit_profile(m: Measurements) -> DeviceProfile:
    fpr = ffn_flops_per_row(m.d_model, m.d_expert, m.activation)
    grouped, eg = _fit_gemm(m.grouped, "grouped", lambda ld: grouped_features(ld, fpr, m.tile_rows), m.tile_rows)
    dense, ed = _fit_gemm(m.dense, "dense", lambda ld: dense_features(ld, fpr), 1)
    copy, ec = _fit_link(m.copy, "copy")
    errors = {"grouped": eg, "dense": ed, "copy": ec}
    a2a: Optional[LinkFit] = None
    if m.all_to_all:
        a2a, errors["all_to_all"] = _fit_link(m.all_to_all, "all_to_all")
    at = {
        "d_model": m.d_model,
        "d_expert": m.d_expert,
        "activation": m.activation,
        "experts": len(m.grouped[0].loads),
        "samples": {
            "grouped": len(m.grouped),
            "dense": len(m.dense),
            "copy": len(m.copy),
            "all_to_all": len(m.all_to_all),
        },
    }
    return DeviceProfile(
        device=m.device,
        dtype=m.dtype,
        grouped=grouped,
        dense=dense,
        copy=copy,
        all_to_all=a2a,
        world_size=m.world_size,
        measured_at=at,
        fit_error=errors,
    ).validate()
