"""``locmoe convert CHECKPOINT OUT_DIR [--to torch|mindspore]``: a checkpoint of one backend as the other's.

The weights (``model.safetensors``, ``models.spec`` names, experts consolidated) are the same file in both
backends and are copied as they are. What differs is per rank: the AdamW state (torch ``optimizer_rank{r}.pt``
indexed by parameter order ↔ MindSpore ``optimizer_rank{r}.ckpt`` by name) and the RNG states. The result is
a sealed checkpoint under ``OUT_DIR/checkpoints/`` at the same step, so ``locmoe train CONFIG --set
parallel.backend=... --set train.out_dir=OUT_DIR --resume`` continues the run on the other backend with the
same layout. Each backend's own module reads and writes its files (``read_optimizer``/``write_optimizer``,
``read_rng``/``write_rng``); this module only moves framework-neutral numpy data between them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from locmoe.checkpointing import list_checkpoints, resolve, seal, temp_dir, verify
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


def main(args: argparse.Namespace) -> int:
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
    """Write ``checkpoint`` in the ``to`` backend's format under ``out_dir``; returns the new step directory."""
    src = resolve(checkpoint)
    verify(src)
    state = json.loads((src / "train_state.json").read_text())
    source = state.get("backend", "torch")
    target = to or next(b for b in BACKENDS if b != source)
    if target not in BACKENDS:
        raise ConvertError(f"--to {target!r}: unknown backend; allowed: {list(BACKENDS)}")
    if target == source:
        raise ConvertError(f"{src} is already a {source} checkpoint (--to {target}); nothing to convert")
    if list_checkpoints(out_dir):
        raise ConvertError(f"{out_dir} already holds checkpoints; choose an empty or new OUT_DIR")
    reader, writer = _backend_module(source), _backend_module(target)
    cfg = config_from_dict(state["config"])
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, backend=target))
    step, tmp = int(state["step"]), temp_dir(out_dir, int(state["step"]))
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copyfile(src / "model.safetensors", tmp / "model.safetensors")
    for rank in range(state["layout"]["world_size"]):
        writer.write_optimizer(reader.read_optimizer(src, rank, cfg), tmp, rank, cfg)
        writer.write_rng(reader.read_rng(src, rank), tmp, rank, cfg.train.seed)
    converted = dict(state, backend=target, config=config_to_dict(cfg), converted_from={"path": str(src),
                                                                                        "backend": source})
    (tmp / "train_state.json").write_text(json.dumps(converted, indent=2) + "\n")
    return seal(out_dir, step, {"backend": target})
