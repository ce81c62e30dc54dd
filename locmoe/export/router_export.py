"""Write and read an exported router directory: ``router.safetensors`` + ``manifest.json``.

Tensor names are the model's (``locmoe.model_spec``), per MoE layer index i: ``layers.{i}.moe.router.gate_weight``
[d, E] (learned gate only), ``layers.{i}.moe.router.angle_ema`` [E] (capacity-bound state) and
``layers.{i}.moe.router.hash_table`` [V] (hash router only).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from safetensors.numpy import load_file, save_file

from locmoe.atomic_io import atomic_directory, write_text, writing
from locmoe.export.manifest import ExportError, PlacementTable, RouterManifest

WEIGHTS = "router.safetensors"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FILES = (WEIGHTS, MANIFEST, TOKENIZER)  # everything an export directory may hold


@dataclass
class ExportedRouter:
    manifest: RouterManifest
    tensors: dict[str, np.ndarray]

    @property
    def placement(self) -> PlacementTable:
        return PlacementTable.from_dict(self.manifest.placement)

    def layer_tensor(self, layer: int, name: str) -> np.ndarray | None:
        return self.tensors.get(f"layers.{layer}.moe.router.{name}")


def write_router_export(
    out_dir: str | Path, manifest: RouterManifest, tensors: dict[str, np.ndarray], tokenizer: Optional[Path] = None
) -> Path:
    """Write the export atomically: the directory appears complete or not at all. ``out_dir`` may exist only
    empty or as a previous export (nothing else is ever replaced); ``tokenizer``: a tokenizers JSON file to
    ship beside the routers."""
    manifest.tensors = {k: list(v.shape) for k, v in sorted(tensors.items())}
    with atomic_directory(out_dir, replaceable=is_export, what="router export") as tmp:
        with writing(tmp / WEIGHTS) as f:
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(f))
        if tokenizer is not None:
            with writing(tmp / TOKENIZER) as f:
                shutil.copyfile(tokenizer, f)
        write_text(tmp / MANIFEST, manifest.to_json())
    return Path(out_dir)


def is_export(path: Path) -> bool:
    """Whether ``path`` is recognisably a router export this code wrote: only export files, and a manifest
    that is one (so re-exporting replaces it, and a directory holding anything else is never removed)."""
    if not {p.name for p in path.iterdir()} <= set(FILES):
        return False
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "router_kind" in data and "format_version" in data


def load_router(path: str | Path) -> ExportedRouter:
    """Read an export; a missing file, a corrupt file or a tensor that disagrees with the manifest is an
    :class:`ExportError` naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"router export {path} is not a directory")
    manifest = RouterManifest.from_file(path / MANIFEST)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ExportError(f"{weights} not found")
    try:
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ExportError(f"{weights} is corrupt: {err}") from None
    expected = {k: tuple(v) for k, v in manifest.tensors.items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise ExportError(f"{weights} holds {found}, the manifest lists {expected}")
    return ExportedRouter(manifest, tensors)
