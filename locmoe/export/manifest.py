"""``manifest.json`` of an exported router, and the placement table that planners write.

The placement table says, for every MoE layer, which device holds each expert (and which devices hold
replicas of it). ``locmoe plan place|replicate`` write it on its own (``placement.json``); an export embeds it.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from locmoe.errors import LocMoEError

EXPORT_FORMAT_VERSION = 1


class ExportError(LocMoEError):
    """An export directory or placement file that is missing, corrupt, or from another version/model."""


@dataclass
class PlacementTable:
    """Expert → device per MoE layer, with optional replicas.

    Attributes:
        num_devices: devices the table places experts on.
        moe_layers: model layer index of each entry below.
        expert_to_device: [layers][E] the primary device of each expert.
        replicas: [layers][E] the other devices holding a copy of the expert (empty lists = none).
        source: how the table was made (contiguous, round_robin, exflow, grace, ...).
    """

    num_devices: int
    moe_layers: list[int]
    expert_to_device: list[list[int]]
    replicas: list[list[list[int]]] = field(default_factory=list)
    source: str = "contiguous"

    def validate(self, num_experts: int | None = None) -> "PlacementTable":
        if len(self.expert_to_device) != len(self.moe_layers):
            raise ExportError(
                f"placement: {len(self.expert_to_device)} layers of expert_to_device for "
                f"{len(self.moe_layers)} MoE layers"
            )
        for i, row in enumerate(self.expert_to_device):
            if num_experts is not None and len(row) != num_experts:
                raise ExportError(
                    f"placement: layer {self.moe_layers[i]} places {len(row)} experts, the model has {num_experts}"
                )
            bad = [d for d in row if not 0 <= d < self.num_devices]
            if bad:
                raise ExportError(
                    f"placement: layer {self.moe_layers[i]} names devices {bad} outside [0, {self.num_devices})"
                )
        if self.replicas and len(self.replicas) != len(self.moe_layers):
            raise ExportError(
                f"placement: replicas given for {len(self.replicas)} layers, expected {len(self.moe_layers)}"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "PlacementTable":
        return PlacementTable(**_known(PlacementTable, d, "placement")).validate()

    def save(self, path: str | Path) -> Path:
        from locmoe.atomic_io import atomic_write_text

        return atomic_write_text(
            path, json.dumps({"format_version": EXPORT_FORMAT_VERSION, "placement": self.to_dict()}, indent=2) + "\n"
        )

    @staticmethod
    def load(path: str | Path) -> "PlacementTable":
        data = _read_json(Path(path))
        _check_version(data, path)
        if "placement" not in data:
            raise ExportError(f"{path}: no 'placement' entry")
        return PlacementTable.from_dict(data["placement"])


@dataclass
class RouterManifest:
    """Everything about the exported routers except their tensors."""

    router_kind: str
    gate: str
    top_k: int
    num_experts: int
    d_model: int
    vocab_size: int
    moe_layers: list[int]
    temperature: float
    rho: float
    capacity: dict  # mode, factor, bound_rule, ..., and the last capacity of each layer
    topology: dict  # nodes, devices_per_node
    placement: dict  # a PlacementTable as a dict
    domains: dict  # num_domains, seed, names, groups
    tensors: dict  # name -> shape, what router.safetensors holds
    source: dict  # checkpoint, step, locmoe version, the job config
    format_version: int = EXPORT_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @staticmethod
    def from_file(path: Path) -> "RouterManifest":
        data = _read_json(path)
        _check_version(data, path)
        m = RouterManifest(**_known(RouterManifest, data, str(path)))
        PlacementTable.from_dict(m.placement).validate(m.num_experts)
        return m


def _read_json(path: Path) -> dict:
    """A JSON object; anything else (a pickle, a list, a truncated file) is an ExportError naming the file."""
    if not path.is_file():
        raise ExportError(f"{path} not found")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(
            f"{path} is not valid JSON ({type(err).__name__}: {str(err)[:80]}); the file is corrupt "
            "or was tampered with"
        ) from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_version(data: dict, path: Any) -> None:
    v = data.get("format_version")
    if v != EXPORT_FORMAT_VERSION:
        raise ExportError(
            f"{path}: format_version {v!r} is not supported; this locmoe reads version {EXPORT_FORMAT_VERSION}"
        )


def _known(cls: type, data: dict, where: str) -> dict:
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ExportError(f"{where}: missing {missing}")
    return {k: v for k, v in data.items() if k in names}
