"""Checkpoints of the MindSpore backend, in the shared directory format of ``locmoe.checkpointing``:

    model.safetensors        every parameter by its ``models.spec`` name, experts consolidated over the EP
                             group, fp32 (rank 0 writes it; byte-for-byte the torch backend's format, so either
                             backend reads it)
    optimizer_rank{r}.ckpt   AdamW state of rank r, a MindSpore checkpoint: ``exp_avg.<name>``,
                             ``exp_avg_sq.<name>`` (this rank's experts) and ``step``
    rng_rank{r}.json         numpy / python RNG states of rank r (the model draws nothing from MindSpore's RNG)
    train_state.json         step, job config, layout, backend

``locmoe convert`` turns the per-rank optimiser and RNG files into the torch backend's and back.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor
from safetensors import safe_open
from safetensors.numpy import save_file

from backends.mindspore.collectives import all_gather_rows
from backends.mindspore.distributed import DistContext
from locmoe.checkpointing import CheckpointError, read_train_state, write_checkpoint, write_train_state
from models.spec import is_expert_param

OPTIMIZER_FILE = "optimizer_rank{rank}.ckpt"
RNG_FILE = "rng_rank{rank}.json"


def consolidated_state(model, ctx: DistContext) -> dict[str, np.ndarray]:
    """Full fp32 arrays by spec name (float64 router state kept); experts gathered from the EP group."""
    state = {}
    for name, p in model.named_state().items():
        t = p.value()
        if is_expert_param(name) and ctx.ep.size > 1:
            parts = all_gather_rows(t, ctx.ep).asnumpy().reshape(ctx.ep.size, *t.shape)
            full = np.empty((model.cfg.moe.num_experts, *t.shape[1:]), dtype=parts.dtype)
            placement = model.layers[model.moe_layers[0]].moe.ep.placement
            for r in range(ctx.ep.size):
                full[list(placement.local_experts(r))] = parts[r]
            a = full
        else:
            a = t.asnumpy()
        state[name] = np.ascontiguousarray(a if a.dtype == np.float64 else a.astype(np.float32))
    return state


def save_optimizer(state: dict, path: Path) -> None:
    """An AdamW ``state_dict`` (see ``backends.mindspore.optim``) as one MindSpore checkpoint file."""
    entries = [{"name": f"{key}.{n}", "data": Tensor(v)} for key in ("exp_avg", "exp_avg_sq")
               for n, v in state[key].items()]
    ms.save_checkpoint(entries, str(path), append_dict={"step": int(state["step"])})


def load_optimizer(path: Path) -> dict:
    """The inverse of :func:`save_optimizer`: numpy arrays by parameter name."""
    raw = ms.load_checkpoint(str(path))
    state = {"step": int(raw.pop("step").asnumpy()), "exp_avg": {}, "exp_avg_sq": {}}
    for key, value in raw.items():
        kind, name = key.split(".", 1)
        state[kind][name] = value.asnumpy()
    return state


def rng_to_json(numpy_state: tuple, python_state: tuple) -> dict:
    kind, keys, pos, has_gauss, gauss = numpy_state
    version, internal, gauss_next = python_state
    return {"numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def rng_from_json(state: dict) -> tuple[tuple, tuple]:
    """(numpy state, python state) as ``np.random.set_state`` and ``random.setstate`` take them."""
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    version, internal, gauss_next = state["python"]
    return (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss), (version, tuple(internal), gauss_next)


def save_checkpoint(model, optimizer, ctx: DistContext, step: int, extra: dict) -> Path | None:
    cfg = model.cfg

    def write(tmp: Path) -> None:
        state = consolidated_state(model, ctx)
        write_optimizer(optimizer.state_dict(), tmp, ctx.rank)
        write_rng({"numpy": np.random.get_state(), "python": random.getstate()}, tmp, ctx.rank)
        if ctx.is_main:
            save_file(state, str(tmp / "model.safetensors"))
            write_train_state(tmp, step, cfg, ctx.layout, "mindspore", extra)

    return write_checkpoint(cfg.train.out_dir, step, cfg.train.keep_checkpoints, ctx.is_main, lambda: _barrier(ctx),
                            write, "mindspore")


def load_model_weights(model, path: Path) -> None:
    """Copy ``model.safetensors`` (either backend's) into the model; this rank takes its own experts."""
    file = path / "model.safetensors"
    own = model.named_state()
    experts = list(model.expert_ids())
    with safe_open(str(file), framework="np") as f:
        found = set(f.keys())
        if found != set(own):
            raise CheckpointError(f"{path} was written for another model: missing {sorted(set(own) - found)[:5]}, "
                                  f"unexpected {sorted(found - set(own))[:5]}")
        for name, p in own.items():
            t = f.get_tensor(name)
            if is_expert_param(name):
                t = t[experts]
            if tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(f"{path}: {name} has shape {tuple(t.shape)}, the model expects "
                                      f"{tuple(p.shape)}")
            p.set_data(Tensor(t.astype(ms.dtype_to_nptype(p.dtype))))


def load_checkpoint(path: Path, model, optimizer, ctx: DistContext) -> tuple[int, dict]:
    """Restore weights, optimiser and RNG; returns (step to continue from, train_state)."""
    state = read_train_state(path, ctx.layout, "mindspore")
    load_model_weights(model, path)
    optimizer.load_state_dict(read_optimizer(path, ctx.rank))
    rng = read_rng(path, ctx.rank)
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return state["step"], state


def _barrier(ctx: DistContext) -> None:
    """All ranks meet (a tiny world all-reduce: MindSpore's CPU build has no Barrier)."""
    if ctx.world_size > 1:
        from backends.mindspore.collectives import all_reduce

        all_reduce(Tensor(np.zeros(1, np.float32)), ctx.world).asnumpy()


# ----------------------------------------------------------------------------- per-rank files (also locmoe convert)

def read_optimizer(path: Path, rank: int, cfg=None) -> dict:
    """Rank ``rank``'s AdamW state as {"step", "exp_avg": {name: array}, "exp_avg_sq": {...}} (numpy)."""
    return load_optimizer(path / OPTIMIZER_FILE.format(rank=rank))


def write_optimizer(state: dict, path: Path, rank: int, cfg=None) -> None:
    save_optimizer(state, path / OPTIMIZER_FILE.format(rank=rank))


def read_rng(path: Path, rank: int) -> dict:
    """{"numpy": state tuple, "python": state tuple} of a rank."""
    np_state, py_state = rng_from_json(json.loads((path / RNG_FILE.format(rank=rank)).read_text()))
    return {"numpy": np_state, "python": py_state}


def write_rng(state: dict, path: Path, rank: int, seed: int = 0) -> None:
    """``rng_rank{r}.json``; ``seed`` is unused (MindSpore's generator is reseeded from the config)."""
    (path / RNG_FILE.format(rank=rank)).write_text(json.dumps(rng_to_json(state["numpy"], state["python"])) + "\n")
