"""Checkpoints of the MindSpore backend, in the shared directory format of ``locmoe.checkpoint.directory`` (format 2):

    model.safetensors              every parameter by its ``locmoe.model_spec`` name, experts consolidated over the
                                   EP group, fp32 (rank 0 writes it; byte-for-byte the torch backend's format,
                                   so either backend reads it)
    optimizer_rank{r}.safetensors  AdamW moments of rank r, ``exp_avg.<name>``, ``exp_avg_sq.<name>`` (this
                                   rank's experts), the torch backend's layout; whole, also when the run shards
                                   them (``parallel.shard``: ``sharded_adamw`` gathers them to save, slices on load)
    optimizer_rank{r}.json         the step count and the hyper-parameters
    rng_rank{r}.json               numpy / python RNG states of rank r (the model draws nothing from MindSpore's RNG)
    train_state.json               step, job config, layout, backend (and tokenizer.json when the run has a file)

Nothing is unpickled. Format 1 kept the optimiser in a MindSpore checkpoint (``optimizer_rank{r}.ckpt``,
protobuf, no pickle), which is still read. ``locmoe convert`` turns the per-rank files into the torch
backend's and back.
"""

from __future__ import annotations

import random
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor
from safetensors.numpy import save_file

from backends.mindspore.collectives import all_gather_rows
from backends.mindspore.distributed import DistContext
from locmoe.checkpoint import files
from locmoe.checkpoint.directory import (
    CheckpointError,
    format_version,
    read_train_state,
    reading,
)
from locmoe.checkpoint.sharded_weights import model_tensors, read_experts
from locmoe.model_spec import is_expert_param
from locmoe.training.finite import nonfinite_error

LEGACY_OPTIMIZER_FILE = "optimizer_rank{rank}.ckpt"
RNG_FILE = files.RNG_FILE


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


def load_legacy_optimizer(path: Path) -> dict:
    """A format-1 ``optimizer_rank{r}.ckpt`` (a MindSpore protobuf checkpoint): numpy arrays by name."""
    with reading(path):
        raw = ms.load_checkpoint(str(path))
        state = {"step": int(raw.pop("step").asnumpy()), "exp_avg": {}, "exp_avg_sq": {}}
        for key, value in raw.items():
            kind, name = key.split(".", 1)
            state[kind][name] = value.asnumpy()
    return state


def first_nonfinite(model, optimizer) -> str | None:
    """The first trained parameter (or AdamW moment) of this rank holding NaN/Inf, else None (router state such
    as ``angle_ema`` may legitimately start unmeasured)."""
    for name, p in optimizer.params.items():
        if not np.isfinite(p.asnumpy()).all():
            return name
    for key in files.MOMENTS:
        for name, t in getattr(optimizer, key).items():
            if not np.isfinite(t.asnumpy()).all():
                return f"{key} of {name}"
    return None


def check_finite(model, optimizer, ctx: DistContext, step: int) -> None:
    """Before sealing: every rank's weights and moments are finite, or every rank stops (NonFiniteError)."""
    from locmoe.atomic_io import fault_due

    if fault_due("nan_weights", step):  # test hook: the update of this step diverged
        p = next(iter(optimizer.params.values()))
        p.set_data(Tensor(np.full(p.shape, np.nan, np.float32)))
    bad = first_nonfinite(model, optimizer)
    flag = 0.0 if bad is None else 1.0
    if ctx.world_size > 1:
        from backends.mindspore.collectives import all_reduce

        flag = float(all_reduce(Tensor(np.array([flag], np.float32)), ctx.world).asnumpy()[0])
    if flag > 0:
        raise nonfinite_error(model.cfg.train.out_dir, step, bad, ctx.rank)


def write_rank_files(model, optimizer, ctx: DistContext, tmp: Path, step: int) -> None:
    """This rank's files of step ``step``'s checkpoint into ``tmp``: its optimiser and RNG states (rank 0 also
    ``model.safetensors``)."""
    state = consolidated_state(model, ctx)
    opt = optimizer.state_dict()
    write_optimizer(
        {"step": opt["step"], **{k: {n: t.asnumpy() for n, t in opt[k].items()} for k in files.MOMENTS}},
        tmp,
        ctx.rank,
        model.cfg,
        optimizer,
    )
    write_rng({"numpy": np.random.get_state(), "python": random.getstate()}, tmp, ctx.rank)
    if ctx.is_main:
        files.save_tensor_file(save_file, state, tmp / "model.safetensors")


def load_model_weights(model, path: Path) -> None:
    """Copy ``model.safetensors`` (either backend's) into the model; this rank takes its own experts."""
    own = model.named_state()
    experts = list(model.expert_ids())
    with model_tensors(path) as f:
        found = set(f.keys())
        if found != set(own):
            raise CheckpointError(
                f"{path} was written for another model: missing {sorted(set(own) - found)[:5]}, "
                f"unexpected {sorted(found - set(own))[:5]}"
            )
        for name, p in own.items():
            t = read_experts(f, name, experts) if is_expert_param(name) else f.get_tensor(name)
            if tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(f"{path}: {name} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
            p.set_data(Tensor(t.astype(ms.dtype_to_nptype(p.dtype))))


def load_checkpoint(path: Path, model, optimizer, ctx: DistContext) -> tuple[int, dict]:
    """Restore weights, optimiser and RNG; returns (step to continue from, train_state). The optimiser's
    hyper-parameters stay this run's (the config's); ``locmoe.training.resume_check`` reported any change."""
    state = read_train_state(path, ctx.layout, "mindspore")
    load_model_weights(model, path)
    opt = read_optimizer(path, ctx.rank)
    missing = sorted(set(optimizer.params) - set(opt["exp_avg"]))
    if missing:
        raise CheckpointError(f"{path}: the optimiser state of rank {ctx.rank} lacks {missing[:5]}")
    optimizer.load_state_dict(opt)
    rng = read_rng(path, ctx.rank)
    with reading(path / RNG_FILE.format(rank=ctx.rank)):
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return state["step"], state


def barrier(ctx: DistContext) -> None:
    """All ranks meet (a tiny world all-reduce: MindSpore's CPU build has no Barrier)."""
    if ctx.world_size > 1:
        from backends.mindspore.collectives import all_reduce

        all_reduce(Tensor(np.zeros(1, np.float32)), ctx.world).asnumpy()


# ----------------------------------------------------------------------------- per-rank files (also locmoe convert)


def read_optimizer(path: Path, rank: int, cfg=None) -> dict:
    """Rank ``rank``'s AdamW state as {"step", "exp_avg": {name: array}, "exp_avg_sq": {...}} (numpy)."""
    if format_version(path) == 1:
        return load_legacy_optimizer(path / LEGACY_OPTIMIZER_FILE.format(rank=rank))
    return files.read_adamw(path, rank)


def write_optimizer(state: dict, path: Path, rank: int, cfg=None, optimizer=None) -> None:
    """The files of an AdamW state (numpy, by name): moments in safetensors, the step and hyper-parameters
    (``optimizer``'s, else the config's) in JSON."""
    names = sorted(state["exp_avg"])
    if optimizer is not None:
        lr, betas, eps, decay = optimizer.lr, list(optimizer.betas), optimizer.eps, optimizer.decay
    else:
        assert cfg is not None, "write_optimizer needs the optimizer or the config"
        t = cfg.train
        lr, betas, eps = t.lr, [t.beta1, t.beta2], 1e-8
        decay = {n: (t.weight_decay if np.ndim(state["exp_avg"][n]) >= 2 else 0.0) for n in names}
    groups = [
        {"lr": lr, "betas": betas, "eps": eps, "weight_decay": wd, "params": [n for n in names if decay[n] == wd]}
        for wd in sorted(set(decay[n] for n in names))
    ]
    tensors = {
        f"{key}.{n}": np.ascontiguousarray(state[key][n], dtype=np.float32) for key in files.MOMENTS for n in names
    }
    files.write_optimizer_files(
        path, rank, tensors, {n: {"step": int(state["step"])} for n in names}, groups, {}, save=save_file
    )


def read_rng(path: Path, rank: int) -> dict:
    """{"numpy": state tuple, "python": state tuple} of a rank."""
    np_state, py_state, _ = files.read_rng_file(path, rank)
    return {"numpy": np_state, "python": py_state}


def write_rng(state: dict, path: Path, rank: int, seed: int = 0) -> None:
    """``rng_rank{r}.json``; ``seed`` is unused (MindSpore's generator is reseeded from the config)."""
    files.write_rng_file(files.rng_to_json(state["numpy"], state["python"]), path, rank)
