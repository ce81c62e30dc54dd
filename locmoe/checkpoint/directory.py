"""Checkpoint directories: ``out_dir/checkpoints/step_00000100/`` holding the backend's files and a
``manifest.json`` (file sizes and SHA-256) written last. A directory is built under a temporary name and
renamed when complete, so a crash mid-write leaves the previous checkpoints intact; a checkpoint whose
files do not match its manifest is reported as corrupt, never loaded half-way.

Format 2 holds nothing that is unpickled: tensors in safetensors, everything else in JSON (see
``locmoe.checkpoint.files``). Format 1 (locmoe before it) kept the torch backend's optimiser and RNG states in
pickles; those are read only when the user says they trust the file (``--trust-checkpoint``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locmoe.atomic_io import fault_due, fsync_dir, fsync_tree, write_error, write_text, writing
from locmoe.errors import LocMoEError

if TYPE_CHECKING:
    from locmoe.backend_api import Trainer
    from locmoe.config.schema import JobConfig

CHECKPOINT_FORMAT_VERSION = 2
SHARDED_FORMAT_VERSION = 3  # format 2 whose weights and optimizer states are every rank's shards (SHARDED_DIR)
LEGACY_FORMAT_VERSIONS = (1,)  # still read; their pickled files only with --trust-checkpoint
TOKENIZER_FILE = "tokenizer.json"
TRUST_FLAG = "--trust-checkpoint"
SHARDED_DIR = "sharded"  # every rank's shards (locmoe.checkpoint.sharded_weights): the one folder a checkpoint may hold
_NAME = re.compile(r"^step_(\d{8})$")
_trust_legacy = False


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


# ----------------------------------------------------------------------------- trust of legacy pickles


def trust_legacy_checkpoints(trusted: bool = True) -> None:
    """``--trust-checkpoint``: allow reading format-1 pickles (the CLI sets it for this process)."""
    global _trust_legacy
    _trust_legacy = trusted


def require_trust(file: Path) -> None:
    """A format-1 pickle may only be read when the user said they trust it."""
    if not _trust_legacy:
        raise CheckpointError(
            f"{file} is a pickle written by an older locmoe (checkpoint format 1); loading a "
            f"pickle can run code, so it is not read by default. If you trust where this "
            f"checkpoint came from, pass {TRUST_FLAG} (or convert it once with `locmoe convert "
            f"... {TRUST_FLAG}`)"
        )


# ----------------------------------------------------------------------------- reading, safely


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint; anything else (a pickle, a truncated file) is a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path} is not a JSON file ({type(err).__name__}: {str(err)[:80]}); the checkpoint "
            "is corrupt or was tampered with"
        ) from None


def _check_manifest(manifest: Any, path: Path) -> None:
    where = path / "manifest.json"
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version not in (CHECKPOINT_FORMAT_VERSION, SHARDED_FORMAT_VERSION) and version not in LEGACY_FORMAT_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} is not supported (this locmoe reads "
            f"{CHECKPOINT_FORMAT_VERSION} and {SHARDED_FORMAT_VERSION}, and {list(LEGACY_FORMAT_VERSIONS)})"
        )
    if not isinstance(manifest.get("step"), int) or isinstance(manifest["step"], bool) or manifest["step"] < 0:
        raise CheckpointError(f"{where}: 'step' must be a non-negative integer, got {manifest.get('step')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{where}: 'files' must be an object of file name -> {{bytes, sha256}}")
    for name, info in files.items():
        folder, _, plain = name.rpartition("/")
        if folder not in ("", SHARDED_DIR) or "\\" in plain or plain in ("", ".", "..", "manifest.json"):
            raise CheckpointError(
                f"{where}: file name {name!r} is not allowed (plain names inside the checkpoint, or in its "
                f"{SHARDED_DIR}/ folder)"
            )
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("bytes"), int)
            or not isinstance(info.get("sha256"), str)
        ):
            raise CheckpointError(f"{where}: the entry of {name!r} must be {{\"bytes\": int, \"sha256\": str}}")


def verify(path: str | Path) -> dict:
    """The manifest of a complete, intact checkpoint; CheckpointError naming what is wrong otherwise."""
    path = Path(path)
    man_path = path / "manifest.json"
    if not man_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no manifest.json)")
    manifest = read_json(man_path)
    _check_manifest(manifest, path)
    m = _NAME.match(path.name)
    if m and int(m.group(1)) != manifest["step"]:
        raise CheckpointError(
            f"{path}: the manifest says step {manifest['step']}, the directory name step "
            f"{int(m.group(1))}; the checkpoint was renamed or tampered with"
        )
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} listed in the manifest is missing")
        if f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its checksum; the checkpoint is corrupt")
    return manifest


def format_version(path: Path) -> int:
    """The format of a verified checkpoint (1: torch's per-rank files are pickles; 2: nothing is; 3: format 2
    with every rank's shards in SHARDED_DIR in place of the model and optimizer files)."""
    return read_json(path / "manifest.json")["format_version"]


def load_state(path: str | Path) -> dict:
    """Verify a checkpoint and read its ``train_state.json`` (step, config, layout, backend), checked for
    shape and for agreeing with the manifest's step."""
    path = Path(path)
    manifest = verify(path)
    where = path / "train_state.json"
    if "train_state.json" not in manifest["files"]:
        raise CheckpointError(f"{path}: the manifest does not list train_state.json")
    state = read_json(where)
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(state).__name__}")
    for key, kind in (("step", int), ("config", dict), ("layout", dict)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{where}: {key!r} must be a JSON {kind.__name__}, got {state.get(key)!r:.80}")
    if state["step"] != manifest["step"]:
        raise CheckpointError(
            f"{where} says step {state['step']}, its manifest step {manifest['step']}; the checkpoint is inconsistent"
        )
    lay = state["layout"]
    for key in ("world_size", "nodes", "devices_per_node"):
        if not isinstance(lay.get(key), int) or lay[key] < 1:
            raise CheckpointError(f"{where}: layout.{key} must be a positive integer, got {lay.get(key)!r}")
    return state


def safe_tensors(file: Path, framework: str = "np"):
    """``safetensors.safe_open`` of a checkpoint's tensor file; a file that is not one is a CheckpointError."""
    from safetensors import safe_open

    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        return safe_open(str(file), framework=framework)
    except Exception as err:  # safetensors raises its own error type for a header it cannot parse
        raise CheckpointError(
            f"{file} is not a safetensors file ({str(err)[:80]}); the checkpoint is corrupt or was tampered with"
        ) from None


# ----------------------------------------------------------------------------- finding checkpoints


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
            load_state(path)
            return path
        except CheckpointError as err:
            if rejected is not None:
                rejected.append(str(err))
    return None


def resolve(path: str | Path, announce: bool = True) -> Path:
    """A checkpoint directory, or a run's out_dir: its newest checkpoint, which must verify.

    Given a run directory, the checkpoint used is printed (stderr, rank 0); a newest checkpoint that does not
    verify stops the command (CheckpointError naming it and the newest one that does) rather than silently
    using an older one.
    """
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} is neither a checkpoint nor a run directory holding a checkpoint")
    newest = found[-1][1]
    try:
        load_state(newest)
    except CheckpointError as err:
        older = latest(path)
        alt = (
            f"; the newest one that verifies is {older}: name it to use it"
            if older is not None
            else "; no older checkpoint verifies either"
        )
        raise CheckpointError(f"the newest checkpoint of {path} does not verify ({err}){alt}") from None
    if announce and _is_main():
        print(f"using checkpoint {newest} (the newest of {path})", file=sys.stderr)
    return newest


def _is_main() -> bool:
    from locmoe.parallel.topology import LaunchEnv

    return LaunchEnv.from_environ().rank == 0


# ----------------------------------------------------------------------------- writing


def seal(out_dir: str | Path, step: int, meta: dict) -> Path:
    """Rank 0, after every rank wrote into ``temp_dir``: checksum the files, write the manifest, fsync,
    rename to the final name."""
    tmp, final = temp_dir(out_dir, step), step_dir(out_dir, step)
    listed = sorted(p for p in tmp.rglob("*") if p.is_file())
    files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in listed}
    maybe_inject_fault("kill_during_checkpoint", step)
    version = SHARDED_FORMAT_VERSION if (tmp / SHARDED_DIR).is_dir() else CHECKPOINT_FORMAT_VERSION
    manifest = {"format_version": version, "step": step, "files": files, **meta}
    write_text(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    with writing(final, remove_partial=False):
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    return final


def pruned_dir(path: Path) -> Path:
    """Where a checkpoint goes to be deleted: a hidden name that no reader lists as a checkpoint."""
    return path.with_name(f".{path.name}.pruned")


def prune(out_dir: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; drop older ones. Each is renamed away before its files are deleted,
    so a kill mid-prune never leaves a half-deleted ``step_N`` under a valid-looking name."""
    for _, path in list_checkpoints(out_dir)[:-keep]:
        doomed = pruned_dir(path)
        shutil.rmtree(doomed, ignore_errors=True)  # a leftover of an earlier kill would block the rename
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def clean_temporaries(out_dir: str | Path) -> None:
    """Remove half-written checkpoints and half-pruned ones left by a crash (called before training starts,
    under the run lock)."""
    root = checkpoint_root(out_dir)
    if root.is_dir():
        for p in [*root.glob(".step_*.tmp"), *root.glob(".step_*.pruned")]:
            shutil.rmtree(p, ignore_errors=True)


def maybe_inject_fault(point: str, step: int) -> None:
    """Test hook: ``LOCMOE_FAULT_INJECT=kill_during_checkpoint:20`` SIGKILLs this process at that point."""
    import signal

    if fault_due(point, step):
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- shared by the backends


def layout_record(layout) -> dict:
    """What exact resume needs to match: ranks and the EP topology (``layout``: a ``ParallelLayout``)."""
    t = layout.topology
    return {
        "world_size": layout.world_size,
        "ep_size": t.world_size,
        "nodes": t.num_nodes,
        "devices_per_node": t.devices_per_node,
        "emulated": layout.emulated,
    }


def write_checkpoint(trainer: Trainer, cfg: JobConfig, step: int, extra: dict) -> Path | None:
    """Save step ``step`` (every rank calls it): the trainer checks that its weights are finite, rank 0 makes
    the temporary directory, every rank's trainer writes its files into it, rank 0 adds ``train_state.json``
    (with ``extra``), seals the checkpoint and prunes old ones. Returns the sealed directory on rank 0, None
    elsewhere. A failed write (disk full, read-only) removes the temporary directory and raises a WriteError
    naming the file."""
    trainer.check_weights_finite(step)
    ctx, out_dir = trainer.facts.ctx, cfg.train.out_dir
    tmp = temp_dir(out_dir, step)
    try:
        if ctx.is_main:
            with writing(tmp, remove_partial=False):
                tmp.mkdir(parents=True, exist_ok=True)
        trainer.barrier()
        trainer.write_rank_files(tmp, step)
        if ctx.is_main:
            write_train_state(tmp, step, cfg, ctx.layout, trainer.facts.backend, extra)
        trainer.barrier()
        final = None
        if ctx.is_main:
            final = seal(out_dir, step, {"backend": trainer.facts.backend})
            prune(out_dir, cfg.train.keep_checkpoints)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise write_error(err, tmp) from None
        raise
    trainer.barrier()
    return final


def write_train_state(tmp: Path, step: int, cfg, layout, backend: str, extra: dict) -> None:
    """``train_state.json`` of a checkpoint being written (rank 0), and the tokenizer file beside it."""
    from locmoe import __version__
    from locmoe.config import config_to_dict

    state = {
        "step": step,
        "config": config_to_dict(cfg),
        "layout": layout_record(layout),
        "backend": backend,
        "locmoe_version": __version__,
        **extra,
    }
    copy_tokenizer(cfg.data.tokenizer, tmp)
    write_text(tmp / "train_state.json", json.dumps(state, indent=2) + "\n")


def copy_tokenizer(spec: str, into: Path) -> None:
    """A tokenizers JSON file travels with the checkpoint (and the export) as ``tokenizer.json``, so serving
    does not depend on the path it was trained with (of a Hugging Face tokenizer folder, its tokenizer.json:
    all that the run's tokenizer reads)."""
    if spec != "byte" and (Path(spec).is_file() or (Path(spec) / TOKENIZER_FILE).is_file()):
        source = Path(spec) if Path(spec).is_file() else Path(spec) / TOKENIZER_FILE
        with writing(into / TOKENIZER_FILE):
            shutil.copyfile(source, into / TOKENIZER_FILE)


def tokenizer_spec(spec: str, *dirs: Path) -> str:
    """What to load a run's tokenizer from (``spec``: its config's ``data.tokenizer``): the copy in the first
    of ``dirs`` (a checkpoint, an export) that holds one, else ``spec`` itself."""
    if spec != "byte":
        for d in dirs:
            if (Path(d) / TOKENIZER_FILE).is_file():
                return str(Path(d) / TOKENIZER_FILE)
    return spec


def read_train_state(path: Path, layout, backend: str) -> dict:
    """Verify a checkpoint and read its train state; exact resume needs the backend and the layout it was
    written with (``locmoe convert`` changes the backend)."""
    state = load_state(path)
    written_by = state.get("backend", "torch")
    if written_by != backend:
        raise CheckpointError(
            f"{path} was written by the {written_by} backend and this run uses {backend}: "
            f"convert it first with `locmoe convert {path} OUT_DIR --to {backend}`"
        )
    check_layout(path, state, layout)
    return state


@contextlib.contextmanager
def reading(file: Path):
    """Around a framework's reader of one checkpoint file: any error becomes a CheckpointError naming it."""
    try:
        yield file
    except LocMoEError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{file} cannot be read ({type(err).__name__}: {str(err)[:120]}); the checkpoint "
            "is corrupt or was tampered with"
        ) from None


def check_layout(path: Path, state: dict, layout) -> None:
    """Exact resume needs the layout that wrote the checkpoint, unless it holds every rank's shards (format 3),
    which any layout reads."""
    if state.get("layout") != layout_record(layout) and format_version(path) != SHARDED_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written with layout {state.get('layout')}, this run has "
            f"{layout_record(layout)}; exact resume needs the same ranks and topology (a checkpoint of a sharded "
            "run, parallel.shard optimizer or full, resumes on any)"
        )
