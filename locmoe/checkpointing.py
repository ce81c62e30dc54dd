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

from locmoe.atomic_io import fsync_dir, fsync_tree

CHECKPOINT_FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
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
