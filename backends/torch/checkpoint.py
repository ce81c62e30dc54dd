"""Checkpoints of the torch backend, in the shared directory format of ``locmoe.checkpointing``:

    model.safetensors        every parameter by its ``models.spec`` name, experts consolidated over the EP
                             group, fp32 (rank 0 writes it; any layout and the MindSpore backend can read it)
    optimizer_rank{r}.pt     AdamW state of rank r (exact resume needs the same layout)
    rng_rank{r}.pt           torch / numpy / python RNG states of rank r
    train_state.json         step, job config, layout
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from backends.torch.collectives import all_gather_rows
from backends.torch.distributed import DistContext
from locmoe import __version__
from locmoe.checkpointing import CheckpointError, prune, seal, temp_dir, verify
from locmoe.config import config_to_dict
from models.spec import is_expert_param, parameter_shapes


def layout_of(ctx: DistContext) -> dict:
    t = ctx.layout.topology
    return {"world_size": ctx.world_size, "ep_size": t.world_size, "nodes": t.num_nodes,
            "devices_per_node": t.devices_per_node, "emulated": ctx.emulated}


def consolidated_state(model, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Full fp32 tensors on CPU by spec name; experts gathered from the EP group (complete on rank 0)."""
    names = set(parameter_shapes(model.cfg))
    state = {}
    for name, t in model.state_dict().items():
        if name not in names:
            continue
        if is_expert_param(name) and ctx.ep.size > 1:
            parts = all_gather_rows(t.detach().contiguous(), ctx.ep).view(ctx.ep.size, *t.shape)
            full = torch.empty(model.cfg.moe.num_experts, *t.shape[1:], dtype=t.dtype, device=t.device)
            placement = model.layers[model.moe_layers[0]].moe.ep.placement
            for r in range(ctx.ep.size):
                full[list(placement.local_experts(r))] = parts[r]
            t = full
        state[name] = (t.detach().float() if t.dtype != torch.float64 else t.detach()).cpu().contiguous()
    return state


def save_checkpoint(model, optimizer, ctx: DistContext, step: int, extra: dict) -> Path | None:
    cfg = model.cfg
    tmp = temp_dir(cfg.train.out_dir, step)
    if ctx.is_main:
        tmp.mkdir(parents=True, exist_ok=True)
    _barrier(ctx)
    state = consolidated_state(model, ctx)
    r = ctx.rank
    torch.save(optimizer.state_dict(), tmp / f"optimizer_rank{r}.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
               tmp / f"rng_rank{r}.pt")
    if ctx.is_main:
        save_file(state, str(tmp / "model.safetensors"))
        train_state = {"step": step, "config": config_to_dict(cfg), "layout": layout_of(ctx),
                       "backend": "torch", "locmoe_version": __version__, **extra}
        (tmp / "train_state.json").write_text(json.dumps(train_state, indent=2) + "\n")
    _barrier(ctx)
    final = None
    if ctx.is_main:
        final = seal(cfg.train.out_dir, step, {"backend": "torch"})
        prune(cfg.train.out_dir, cfg.train.keep_checkpoints)
    _barrier(ctx)
    return final


def load_model_weights(model, path: Path) -> None:
    """Copy ``model.safetensors`` into the model; this rank takes its own experts."""
    file = path / "model.safetensors"
    expected = set(parameter_shapes(model.cfg))
    own = model.state_dict()
    experts = list(model.expert_ids())
    with safe_open(str(file), framework="pt") as f:
        found = set(f.keys())
        if found != expected:
            raise CheckpointError(f"{path} was written for another model: missing {sorted(expected - found)[:5]}, "
                                  f"unexpected {sorted(found - expected)[:5]}")
        with torch.no_grad():
            for name in expected:
                t = f.get_tensor(name)
                if is_expert_param(name):
                    t = t[experts]
                if tuple(t.shape) != tuple(own[name].shape):
                    raise CheckpointError(f"{path}: {name} has shape {tuple(t.shape)}, the model expects "
                                          f"{tuple(own[name].shape)}")
                own[name].copy_(t.to(own[name].dtype))


def load_checkpoint(path: Path, model, optimizer, ctx: DistContext) -> tuple[int, dict]:
    """Restore weights, optimiser and RNG; returns (step to continue from, train_state)."""
    verify(path)
    state = json.loads((path / "train_state.json").read_text())
    if state.get("layout") != layout_of(ctx):
        raise CheckpointError(f"{path} was written with layout {state.get('layout')}, this run has "
                              f"{layout_of(ctx)}; exact resume needs the same ranks and topology")
    load_model_weights(model, path)
    optimizer.load_state_dict(torch.load(path / f"optimizer_rank{ctx.rank}.pt", weights_only=False))
    rng = torch.load(path / f"rng_rank{ctx.rank}.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state["step"], state


def _barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()
