"""A checkpoint of one backend as the other's (``locmoe convert``).

The weights (``model.safetensors``, ``locmoe.model_spec`` names, experts consolidated) are the same file in both
backends and are copied as they are, with the tokenizer file when the run has one. What differs is per rank:
the optimiser's hyper-parameters and the RNG states (torch adds its own generator). The result is a sealed
format-2 checkpoint under ``OUT_DIR/checkpoints/`` at the same step, so ``locmoe train CONFIG --set
parallel.backend=... --set train.out_dir=OUT_DIR --resume`` continues the run on the other backend with the
same layout. Each backend reads and writes its own files (a :class:`locmoe.backend_api.CheckpointIO`,
passed in); this module only moves framework-neutral numpy data between them.

A sharded checkpoint (format 3, ``locmoe.checkpoint.sharded_weights``) is consolidated on the way: the model into one
``model.safetensors``, each rank's AdamW moments into its files, tensor by tensor. Converting one to its own
backend is how to consolidate it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from locmoe.atomic_io import check_replaceable, write_text, writing
from locmoe.backend_api import CheckpointIO
from locmoe.checkpoint.directory import (
    TOKENIZER_FILE,
    format_version,
    list_checkpoints,
    load_state,
    resolve,
    seal,
    temp_dir,
)
from locmoe.checkpoint.sharded_weights import is_sharded_checkpoint, model_tensors, sharded_adamw
from locmoe.config import config_from_dict, config_to_dict
from locmoe.errors import LocMoEError

BACKENDS = ("torch", "mindspore")


class ConvertError(LocMoEError):
    """A checkpoint that cannot be converted as asked."""


def check_out_dir(out_dir: str | Path) -> None:
    """OUT_DIR must be new or empty (``locmoe convert`` calls this first, before it reads anything): a
    conversion never writes beside files it did not write, nor over a run's checkpoints."""
    if list_checkpoints(out_dir):
        raise ConvertError(f"{out_dir} already holds checkpoints; choose an empty or new OUT_DIR")
    if Path(out_dir).exists() or Path(out_dir).is_symlink():
        check_replaceable(Path(out_dir), None, "converted checkpoint")


def consolidate(src: Path, file: Path) -> None:
    """``model.safetensors`` of a sharded checkpoint (the target backend reads the one file), tensor by tensor."""
    from safetensors.numpy import save_file

    with model_tensors(src) as f:
        tensors = {name: np.ascontiguousarray(f.get_tensor(name)) for name in f.keys()}
    with writing(file):
        save_file(tensors, str(file))


def convert_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, to: str | None = None, *, checkpoint_io: Callable[[str], CheckpointIO]
) -> Path:
    """Write ``checkpoint`` in the ``to`` backend's format under ``out_dir``; returns the new step directory.
    ``checkpoint_io(name)`` is backend ``name``'s file reader and writer. The same backend is allowed only to
    rewrite a format-1 checkpoint in format 2."""
    check_out_dir(out_dir)
    src = resolve(checkpoint)
    state = load_state(src)
    source = state.get("backend", "torch")
    target = to or next(b for b in BACKENDS if b != source)
    if target not in BACKENDS:
        raise ConvertError(f"--to {target!r}: unknown backend; allowed: {list(BACKENDS)}")
    if target == source and format_version(src) != 1 and not is_sharded_checkpoint(src):
        raise ConvertError(f"{src} is already a {source} checkpoint (--to {target}); nothing to convert")
    reader, writer = checkpoint_io(source), checkpoint_io(target)
    cfg = config_from_dict(state["config"])
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, backend=target))
    step, tmp = state["step"], temp_dir(out_dir, state["step"])
    created = not Path(out_dir).exists()
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        with writing(tmp, remove_partial=False):
            tmp.mkdir(parents=True)
        for name in ("model.safetensors", TOKENIZER_FILE):
            if (src / name).is_file():
                with writing(tmp / name):
                    shutil.copyfile(src / name, tmp / name)
        sharded = is_sharded_checkpoint(src)
        if sharded:
            consolidate(src, tmp / "model.safetensors")
        for rank in range(state["layout"]["world_size"]):
            if sharded:
                moments = sharded_adamw(src, rank, cfg, state["layout"])
            else:
                moments = reader.read_optimizer(src, rank, cfg)
            writer.write_optimizer(moments, tmp, rank, cfg)
            writer.write_rng(reader.read_rng(src, rank), tmp, rank, cfg.train.seed)
        converted = dict(
            state, backend=target, config=config_to_dict(cfg), converted_from={"path": str(src), "backend": source}
        )
        write_text(tmp / "train_state.json", json.dumps(converted, indent=2) + "\n")
        return seal(out_dir, step, {"backend": target})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:  # nothing of ours left behind: the directories we made, if empty
            for d in (tmp.parent, Path(out_dir)):
                try:
                    d.rmdir()
                except OSError:
                    pass
        raise
