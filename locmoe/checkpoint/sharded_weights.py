"""Reading a checkpoint's tensors by ``locmoe.model_spec`` name, whichever way they were written:

    model.safetensors   one file, experts consolidated (format 2, and sharding off)
    sharded/            every rank's shards, written in parallel by ``torch.distributed.checkpoint`` (DCP) in its
                        safetensors layout: ``shard-<rank+1>-model-00001-of-00001.safetensors`` files whose
                        header metadata ``DCP_SHARDING_INFO`` gives each piece's offsets in its full tensor.

In ``sharded/`` a dense tensor is stored as row pieces of ``model.<name>``; an expert tensor [E, ...] as one
entry per expert, ``model.<name>.<expert id>`` (each rank holds whole experts, and a run on another layout
asks for its own experts by id); the AdamW moments as ``exp_avg.<name>`` and ``exp_avg_sq.<name>`` alike,
and the step count as ``optimizer.step``. Everything here is numpy: the export, serving and ``locmoe convert``
read a sharded checkpoint tensor by tensor, and a reader that wants only some experts reads only those.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from locmoe.checkpoint.directory import SHARDED_DIR, CheckpointError, reading, safe_tensors
from locmoe.model_spec import is_expert_param

SHARDING_INFO = "DCP_SHARDING_INFO"  # torch.distributed.checkpoint._hf_utils.CUSTOM_METADATA_KEY
MODEL, STEP = "model", "optimizer.step"
MOMENTS = ("exp_avg", "exp_avg_sq")


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def expert_key(prefix: str, name: str, expert: int) -> str:
    return f"{prefix}.{name}.{expert}"


class ShardedTensors:
    """``safe_open``-like view of a ``sharded/`` folder: ``keys()`` of one kind (``model`` or a moment), and
    ``get_tensor(name)`` assembled from its pieces; ``get_experts(name, ids)`` reads only those experts.
    ``shapes``: the model's tensor shapes by spec name (``model_spec.parameter_shapes``), which the files do not
    record: without them a lost rank's trailing rows would go unnoticed."""

    def __init__(self, folder: Path, kind: str = MODEL, shapes: dict | None = None):
        self.folder, self.kind, self.shapes = Path(folder), kind, shapes or {}
        self.pieces: dict[str, list[tuple[Path, tuple]]] = {}
        for file in sorted(self.folder.glob("*.safetensors")):
            with safe_tensors(file) as f, reading(file):
                info = json.loads((f.metadata() or {}).get(SHARDING_INFO, "{}"))
                for key in f.keys():
                    offsets = tuple(info.get(key, {}).get("saved_offsets", [0] * len(f.get_slice(key).get_shape())))
                    self.pieces.setdefault(key, []).append((file, offsets))
        if not self.pieces:
            raise CheckpointError(f"{self.folder} holds no tensor files; the checkpoint is incomplete")
        self.experts = self._expert_ids()

    def _expert_ids(self) -> dict[str, list[int]]:
        """spec name -> the expert ids stored for it (``<kind>.<name>.<id>`` keys)."""
        out: dict[str, list[int]] = {}
        for key in self.pieces:
            head, _, last = key.rpartition(".")
            if key.startswith(self.kind + ".") and last.isdigit() and is_expert_param(head):
                out.setdefault(head[len(self.kind) + 1 :], []).append(int(last))
        return {name: sorted(ids) for name, ids in out.items()}

    def keys(self) -> list[str]:
        plain = [k[len(self.kind) + 1 :] for k in self.pieces if k.startswith(self.kind + ".")]
        return sorted({k for k in plain if not is_expert_param(k.rpartition(".")[0])} | set(self.experts))

    def get_tensor(self, name: str) -> np.ndarray:
        if name in self.experts:
            return self.get_experts(name, self.experts[name])
        return self.piece(f"{self.kind}.{name}", self.shapes.get(name))

    def get_experts(self, name: str, ids) -> np.ndarray:
        """[len(ids), ...]: the named experts of an expert tensor."""
        missing = sorted(set(ids) - set(self.experts.get(name, ())))
        if missing:
            raise CheckpointError(f"{self.folder}: {name} has no expert {missing[:5]}; the checkpoint is incomplete")
        one = tuple(self.shapes[name][1:]) if name in self.shapes else None
        return np.stack([self.piece(expert_key(self.kind, name, e), one) for e in ids])

    def piece(self, key: str, shape: tuple | None = None) -> np.ndarray:
        """The whole tensor stored under ``key`` (any kind), from its pieces; of ``shape`` if given."""
        if key not in self.pieces:
            raise CheckpointError(f"{self.folder}: no tensor {key!r}; the checkpoint is incomplete")
        parts = []
        for file, offsets in self.pieces[key]:
            with safe_tensors(file) as f, reading(file):
                parts.append((offsets, f.get_tensor(key)))
        if any(len(off) != t.ndim for off, t in parts):
            raise CheckpointError(
                f"{self.folder}: the offsets of {key!r} do not match its pieces; the checkpoint is corrupt"
            )
        if not parts[0][1].ndim:
            return parts[0][1]
        shape = shape or tuple(max(off[d] + t.shape[d] for off, t in parts) for d in range(parts[0][1].ndim))
        full = np.empty(shape, dtype=parts[0][1].dtype)
        filled = 0
        for offsets, t in parts:
            if any(o + n > s for o, n, s in zip(offsets, t.shape, shape)):
                raise CheckpointError(f"{self.folder}: a piece of {key!r} lies outside its shape {tuple(shape)}")
            full[tuple(slice(o, o + n) for o, n in zip(offsets, t.shape))] = t
            filled += t.size
        if filled != full.size:
            raise CheckpointError(f"{self.folder}: the pieces of {key!r} do not cover it; the checkpoint is incomplete")
        return full


def sharded_adamw(path: Path, rank: int, cfg, layout: dict) -> dict:
    """Rank ``rank``'s AdamW state in ``layout`` (a train state's layout record) as ``checkpoint_files.read_adamw``
    gives it: the dense moments whole and the moments of the experts that rank holds (``locmoe convert``)."""
    from locmoe.parallel.topology import ExpertPlacement, Topology

    topo = Topology(layout["nodes"], layout["devices_per_node"])
    ids = range(cfg.moe.num_experts)
    if not layout.get("emulated"):
        ids = ExpertPlacement.from_config(cfg.parallel, cfg.moe.num_experts, topo).local_experts(rank % topo.world_size)
    folder, shapes = Path(path) / SHARDED_DIR, checkpoint_shapes(path)
    out: dict = {"step": int(ShardedTensors(folder).piece(STEP))}
    for key in MOMENTS:
        moments = ShardedTensors(folder, key, shapes)
        out[key] = {
            n: np.asarray(read_experts(moments, n, ids) if is_expert_param(n) else moments.get_tensor(n), np.float32)
            for n in moments.keys()
        }
    return out


def checkpoint_shapes(path: Path) -> dict:
    """The spec shapes of the model a checkpoint holds, from its ``train_state.json``."""
    from locmoe.checkpoint.directory import read_json
    from locmoe.config import config_from_dict
    from locmoe.model_spec import parameter_shapes

    return parameter_shapes(config_from_dict(read_json(Path(path) / "train_state.json")["config"]))


def read_experts(tensors, name: str, ids) -> np.ndarray:
    """Experts ``ids`` of expert tensor ``name`` from ``model_tensors``: only those, where the layout allows."""
    if isinstance(tensors, ShardedTensors):
        return tensors.get_experts(name, list(ids))
    return tensors.get_tensor(name)[list(ids)]


@contextlib.contextmanager
def model_tensors(path: Path) -> Iterator:
    """The model's tensors of checkpoint ``path`` (``keys()``, ``get_tensor(name)``), from either layout."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        yield ShardedTensors(path / SHARDED_DIR, MODEL, checkpoint_shapes(path))
        return
    file = path / "model.safetensors"
    with safe_tensors(file, "np") as f, reading(file):
        yield f
