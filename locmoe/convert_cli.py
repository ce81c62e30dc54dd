"""``locmoe convert CHECKPOINT OUT_DIR [--to torch|mindspore]``: a checkpoint of one backend as the other's.

The weights (``model.safetensors``, ``models.spec`` names, experts consolidated) are the same file in both
backends and are copied as they are, with the tokenizer file when the run has one. What differs is per rank:
the optimiser's hyper-parameters and the RNG states (torch adds its own generator). The result is a sealed
format-2 checkpoint under ``OUT_DIR/checkpoints/`` at the same step, so ``locmoe train CONFIG --set
parallel.backend=... --set train.out_dir=OUT_DIR --resume`` continues the run on the other backend with the
same layout. Each backend's own module reads and writes its files (``read_optimizer``/``write_optimizer``,
``read_rng``/``write_rng``); this module only moves framework-neutral numpy data between them.

A format-1 checkpoint (older locmoe) of the torch backend holds pickles: converting it needs
``--trust-checkpoint``, and ``--to torch`` then rewrites it in format 2 without conversion of the backend.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from locmoe.atomic_io import write_text, writing
from locmoe.checkpointing import (TOKENIZER_FILE, TRUST_FLAG, list_checkpoints, load_state, resolve, seal, temp_dir,
                                  trust_legacy_checkpoints)
from locmoe.config import config_from_dict, config_to_dict
from locmoe.errors import LocMoEError

BACKENDS = ("torch", "mindspore")


class ConvertError(LocMoEError):
    """A checkpoint that cannot be converted as asked."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (out_dir/checkpoints/step_N) or a run's out_dir")
    p.add_argument("out_dir", help="run directory to write the converted checkpoint into (OUT_DIR/checkpoints/)")
    p.add_argument("--to", choices=BACKENDS, default=None,
                   help="target backend (default: the other one than the checkpoint's)")
    p.add_argument("--from", dest="source", choices=["checkpoint", "hf"], default="checkpoint",
                   help="hf: CHECKPOINT is a Hugging Face Qwen2-MoE directory (`locmoe export --format hf`); "
                        "safetensors only, never a pickle")
    p.add_argument(TRUST_FLAG, dest="trust_checkpoint", action="store_true",
                   help="read a format-1 checkpoint's pickles (older locmoe; only for files you trust), e.g. to "
                        "rewrite one in today's format with --to of its own backend")


def main(args: argparse.Namespace) -> int:
    if args.source == "hf":           # a Hugging Face directory (framework-free: locmoe.export.hf_import)
        from locmoe.export.hf_import import import_hf

        print(f"converted to {import_hf(args.checkpoint, args.out_dir)} (routers in {args.out_dir}/router)")
        return 0
    import backends

    for framework in BACKENDS:  # before reading anything: a conversion always reads one and writes the other
        backends.require(framework, "locmoe convert (it reads one backend's files and writes the other's)")
    if args.trust_checkpoint:
        trust_legacy_checkpoints(True)
    out = convert_checkpoint(args.checkpoint, args.out_dir, args.to)
    print(f"converted to {out}")
    return 0


def _backend_module(name: str):
    """``backends.<name>.checkpoint``; a missing framework is a ConvertError naming the extra to install."""
    import importlib

    import backends

    try:
        backends.get(name)
    except backends.BackendUnavailable as err:
        raise ConvertError(f"converting needs both frameworks: {err}") from None
    return importlib.import_module(f"backends.{name}.checkpoint")


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, to: str | None = None) -> Path:
    """Write ``checkpoint`` in the ``to`` backend's format under ``out_dir``; returns the new step directory.
    The same backend is allowed only to rewrite a format-1 checkpoint in format 2."""
    from locmoe.checkpointing import format_version

    src = resolve(checkpoint)
    state = load_state(src)
    source = state.get("backend", "torch")
    target = to or next(b for b in BACKENDS if b != source)
    if target not in BACKENDS:
        raise ConvertError(f"--to {target!r}: unknown backend; allowed: {list(BACKENDS)}")
    if target == source and format_version(src) != 1:
        raise ConvertError(f"{src} is already a {source} checkpoint (--to {target}); nothing to convert")
    if list_checkpoints(out_dir):
        raise ConvertError(f"{out_dir} already holds checkpoints; choose an empty or new OUT_DIR")
    reader, writer = _backend_module(source), _backend_module(target)
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
        for rank in range(state["layout"]["world_size"]):
            writer.write_optimizer(reader.read_optimizer(src, rank, cfg), tmp, rank, cfg)
            writer.write_rng(reader.read_rng(src, rank), tmp, rank, cfg.train.seed)
        converted = dict(state, backend=target, config=config_to_dict(cfg),
                         converted_from={"path": str(src), "backend": source})
        write_text(tmp / "train_state.json", json.dumps(converted, indent=2) + "\n")
        return seal(out_dir, step, {"backend": target})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:                         # nothing of ours left behind: the directories we made, if empty
            for d in (tmp.parent, Path(out_dir)):
                try:
                    d.rmdir()
                except OSError:
                    pass
        raise
