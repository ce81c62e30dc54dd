"""The device calibration profile: fitted coefficients of the expert-layer cost model, as versioned JSON.

``locmoe bench calibrate`` measures one device once and writes this file; serving reads it to choose the
expert kernel and the pipeline's chunk count. A profile is only meaningful for the device (and dtype) it
was measured on, so both are recorded and a mismatch is reported by the caller.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from locmoe.inference.errors import ProfileError

PROFILE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class GemmFit:
    """Time of one expert kernel over a batch: ``intercept_s + per_expert_s * experts + s_per_flop * flops``.

    ``experts`` counts the experts with rows (grouped) or the batch size of the bmm (dense); ``flops`` are
    the FLOPs the kernel actually executes: rows rounded up to ``tile_rows`` per expert (grouped GEMMs work
    in row tiles), or every expert padded to the largest load (dense).
    """

    intercept_s: float
    per_expert_s: float
    s_per_flop: float
    tile_rows: int = 1

    def validate(self, name: str) -> "GemmFit":
        _check_coefficients(name, asdict(self))
        if self.tile_rows < 1:
            raise ProfileError(f"{name}.tile_rows = {self.tile_rows}; it must be >= 1")
        if self.s_per_flop <= 0:
            raise ProfileError(f"{name}.s_per_flop = {self.s_per_flop}; a kernel must take time per FLOP (> 0)")
        return self


@dataclass(frozen=True)
class LinkFit:
    """Time to move ``bytes``: ``latency_s + s_per_byte * bytes`` (an all-to-all, or a device copy)."""

    latency_s: float
    s_per_byte: float

    def validate(self, name: str) -> "LinkFit":
        _check_coefficients(name, asdict(self))
        if self.s_per_byte <= 0:
            raise ProfileError(f"{name}.s_per_byte = {self.s_per_byte}; it must be > 0")
        return self

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + self.s_per_byte * nbytes if nbytes > 0 else 0.0

    @property
    def bandwidth_gbps(self) -> float:
        return 1e-9 / self.s_per_byte


@dataclass(kw_only=True)
class DeviceProfile:
    """Everything the cost model needs about one device kind (and its all-to-all among ``world_size``).

    Attributes:
        device: device name as the framework reports it (e.g. "NVIDIA H200", "cpu").
        dtype: compute dtype the kernels were measured in ("bfloat16", "float32").
        grouped / dense: the two expert kernels (grouped GEMM; padded batched GEMM).
        copy: a device-memory copy of rows (the permutations around the all-to-all).
        all_to_all: the all-to-all among ``world_size`` ranks; None when measured in one process.
        measured_at: shapes and settings of the calibration run (d, f, experts, ...).
        fit_error: median relative error of each fit on its own measurements.
    """

    device: str
    dtype: str
    grouped: GemmFit
    dense: GemmFit
    copy: LinkFit
    all_to_all: Optional[LinkFit] = None
    world_size: int = 1
    measured_at: dict = field(default_factory=dict)
    fit_error: dict = field(default_factory=dict)
    format_version: int = PROFILE_FORMAT_VERSION

    def validate(self) -> "DeviceProfile":
        self.grouped.validate("grouped")
        self.dense.validate("dense")
        self.copy.validate("copy")
        if self.all_to_all is not None:
            self.all_to_all.validate("all_to_all")
        if self.world_size < 1:
            raise ProfileError(f"world_size = {self.world_size}; it must be >= 1")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        from locmoe.atomic_io import atomic_write_text

        return atomic_write_text(path, self.to_json())

    @staticmethod
    def from_dict(data: dict, where: str = "profile") -> "DeviceProfile":
        if data.get("format_version") != PROFILE_FORMAT_VERSION:
            raise ProfileError(
                f"{where}: format_version {data.get('format_version')!r} is not supported; this "
                f"locmoe reads version {PROFILE_FORMAT_VERSION} (re-run `locmoe bench calibrate`)"
            )
        try:
            a2a = data.get("all_to_all")
            return DeviceProfile(
                device=str(data["device"]),
                dtype=str(data["dtype"]),
                grouped=GemmFit(**data["grouped"]),
                dense=GemmFit(**data["dense"]),
                copy=LinkFit(**data["copy"]),
                all_to_all=None if a2a is None else LinkFit(**a2a),
                world_size=int(data.get("world_size", 1)),
                measured_at=dict(data.get("measured_at", {})),
                fit_error=dict(data.get("fit_error", {})),
            ).validate()
        except (KeyError, TypeError) as err:
            raise ProfileError(
                f"{where}: missing or unexpected field ({err}); re-run `locmoe bench calibrate`"
            ) from None

    @staticmethod
    def load(path: str | Path) -> "DeviceProfile":
        from locmoe.text_files import read_json

        path = Path(path)
        if not path.is_file():
            raise ProfileError(
                f"calibration profile {path} not found; write one with `locmoe bench calibrate --out {path}`"
            )
        return DeviceProfile.from_dict(read_json(path, "calibration profile", ProfileError), str(path))


def _check_coefficients(name: str, values: dict) -> None:
    for key, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ProfileError(f"{name}.{key} = {v!r}; coefficients must be finite and >= 0")
