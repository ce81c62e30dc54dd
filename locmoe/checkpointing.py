"""Checkpoint directories: ``out_dir/checkpoints/step_00000100/`` holding the backend's files and a
``manifest.json`` (file sizes and SHA-256) written last. A directory is built under a temporary name and
renamed when complete, so a crash mid-write leaves the previous checkpoints intact; a checkpoint whose
files do not match its manifest is reported as corrupt, never loaded half-way.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Callable

from locmoe.atomic_io import fsync_dir, fsync_tree
from locmoe.errors import LocMoEError

CHECKPOINT_FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointError(LocMoEError):
    """A checkpoint that is missing, incomplete, corrupt or from another version or layout."""


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir(out_dir: str | Path, step: int) -> Path:
    return checkpoint_root(out_dir) / f"step_{step:08d}"


def temp_dir(out_dir: str | Path, step: int) -> Path:
    """Where every rank writes its files before rank 0 seals the checkpoint."""
    return checkpoint_root(out_dir) / f".step_{step:08d}.tmp"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(out_dir: str | Path, step: int, meta: dict) -> Path:
    """Rank 0, after every rank wrote into ``temp_dir``: checksum the files, write the manifest, fsync,
    rename to the final name."""
    tmp, final = temp_dir(out_dir, step), step_dir(out_dir, step)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    maybe_inject_fault("kill_during_checkpoint", step)
    manifest = {"format_version": CHECKPOINT_FORMAT_VERSION, "step": step, "files": files, **meta}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def verify(path: str | Path) -> dict:
    """The manifest of a complete, intact checkpoint; CheckpointError naming what is wrong otherwise."""
    path = Path(path)
    man_path = path / "manifest.json"
    if not man_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no manifest.json)")
    try:
        manifest = json.loads(man_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{man_path} is corrupt: {err}") from None
    if manifest.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format_version')!r} is not supported "
                              f"(this locmoe reads {CHECKPOINT_FORMAT_VERSION})")
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} listed in the manifest is missing")
        if f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its checksum; the checkpoint is corrupt")
    return manifest


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Sealed checkpoint directories, oldest first (temporary directories are not listed)."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest(out_dir: str | Path, rejected: list | None = None) -> Path | None:
    """The newest checkpoint that verifies; newer ones that do not are appended to ``rejected`` with why."""
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            verify(path)
            return path
        except CheckpointError as err:
            if rejected is not None:
                rejected.append(str(err))
    return None


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run's out_dir (its newest valid checkpoint)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    found = latest(path)
    if found is None:
        raise CheckpointError(f"{path} is neither a checkpoint nor a run directory holding a valid checkpoint")
    return found


def prune(out_dir: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; drop older ones and stale temporary directories."""
    for _, path in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def clean_temporaries(out_dir: str | Path) -> None:
    """Remove half-written checkpoints left by a crash (called before training starts)."""
    root = checkpoint_root(out_dir)
    if root.is_dir():
        for p in root.glob(".step_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def maybe_inject_fault(point: str, step: int) -> None:
    """Test hook: ``LOCMOE_FAULT_INJECT=kill_during_checkpoint:20`` SIGKILLs this process at that point."""
    spec = os.environ.get("LOCMOE_FAULT_INJECT", "")
    if spec == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- shared by the backends

def layout_record(layout) -> dict:
    """What exact resume needs to match: ranks and the EP topology (``layout``: a ``ParallelLayout``)."""
    t = layout.topology
    return {"world_size": layout.world_size, "ep_size": t.world_size, "nodes": t.num_nodes,
            "devices_per_node": t.devices_per_node, "emulated": layout.emulated}


def write_checkpoint(out_dir: str | Path, step: int, keep: int, is_main: bool, barrier: Callable[[], None],
                     write: Callable[[Path], None], backend: str) -> Path | None:
    """The protocol every rank follows: rank 0 makes the temporary directory, every rank ``write``s its files
    into it (rank 0 also the shared ones), rank 0 seals it and prunes old checkpoints. Returns the sealed
    directory on rank 0, None elsewhere."""
    tmp = temp_dir(out_dir, step)
    if is_main:
        tmp.mkdir(parents=True, exist_ok=True)
    barrier()
    write(tmp)
    barrier()
    final = None
    if is_main:
        final = seal(out_dir, step, {"backend": backend})
        prune(out_dir, keep)
    barrier()
    return final


def write_train_state(tmp: Path, step: int, cfg, layout, backend: str, extra: dict) -> None:
    """``train_state.json`` of a checkpoint being written (rank 0)."""
    from locmoe import __version__
    from locmoe.config import config_to_dict

    state = {"step": step, "config": config_to_dict(cfg), "layout": layout_record(layout), "backend": backend,
             "locmoe_version": __version__, **extra}
    (tmp / "train_state.json").write_text(json.dumps(state, indent=2) + "\n")


def read_train_state(path: Path, layout, backend: str) -> dict:
    """Verify a checkpoint and read its train state; exact resume needs the backend and the layout it was
    written with (``locmoe convert`` changes the backend)."""
    verify(path)
    state = json.loads((path / "train_state.json").read_text())
    written_by = state.get("backend", "torch")
    if written_by != backend:
        raise CheckpointError(f"{path} was written by the {written_by} backend and this run uses {backend}: "
                              f"convert it first with `locmoe convert {path} OUT_DIR --to {backend}`")
    if state.get("layout") != layout_record(layout):
        raise CheckpointError(f"{path} was written with layout {state.get('layout')}, this run has "
                              f"{layout_record(layout)}; exact resume needs the same ranks and topology")
    return state
