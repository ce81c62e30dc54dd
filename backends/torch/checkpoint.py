"""Checkpoints of the torch backend, in the shared directory format of ``locmoe.checkpointing``:

    model.safetensors        every parameter by its ``models.spec`` name, experts consolidated over the EP
                             group, fp32 (rank 0 writes it; any layout and the MindSpore backend can read it)
    optimizer_rank{r}.pt     AdamW state of rank r (exact resume needs the same layout)
    rng_rank{r}.pt           torch / numpy / python RNG states of rank r
    train_state.json         step, job config, layout
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from backends.torch.collectives import all_gather_rows
from backends.torch.distributed import DistContext
from locmoe.checkpointing import CheckpointError, read_train_state, write_checkpoint, write_train_state
from models.spec import is_expert_param, parameter_shapes


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

    def write(tmp: Path) -> None:
        state = consolidated_state(model, ctx)
        r = ctx.rank
        torch.save(optimizer.state_dict(), tmp / f"optimizer_rank{r}.pt")
        torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / f"rng_rank{r}.pt")
        if ctx.is_main:
            save_file(state, str(tmp / "model.safetensors"))
            write_train_state(tmp, step, cfg, ctx.layout, "torch", extra)

    return write_checkpoint(cfg.train.out_dir, step, cfg.train.keep_checkpoints, ctx.is_main, lambda: _barrier(ctx),
                            write, "torch")


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
    state = read_train_state(path, ctx.layout, "torch")
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


# ----------------------------------------------------------------------------- conversion (locmoe convert)

def optimizer_names(cfg) -> list[str]:
    """Parameter names in the order of ``make_optimizer``'s state indices (decay group, then the rest),
    read from a model built on the meta device (no memory; the order does not depend on the layout)."""
    from backends.torch.collectives import Group
    from backends.torch.distributed import ExpertParallel
    from backends.torch.optim import make_optimizer
    from locmoe.topology import ExpertPlacement, Topology
    from models.pangu_sigma_torch import PanGuSigma

    topo, one = Topology(1, 1), Group(None, (0,), (0,), 0)
    placement = ExpertPlacement.from_config(dataclasses.replace(cfg.parallel, placement="contiguous",
                                                                placement_table=[]), cfg.moe.num_experts, topo)
    with torch.device("meta"):
        model = PanGuSigma(cfg, ExpertParallel(topo, placement, 0, True, one, one, one, cfg.parallel.dispatch))
    index = {id(p): n for n, p in model.named_parameters()}
    return [index[id(p)] for g in make_optimizer(model, cfg.train).param_groups for p in g["params"]]


def read_optimizer(path: Path, rank: int, cfg) -> dict:
    """Rank ``rank``'s AdamW state as {"step", "exp_avg": {name: array}, "exp_avg_sq": {...}} (numpy)."""
    saved = torch.load(path / f"optimizer_rank{rank}.pt", weights_only=False)
    names, out = optimizer_names(cfg), {"step": 0, "exp_avg": {}, "exp_avg_sq": {}}
    for i, s in saved["state"].items():
        out["step"] = max(out["step"], int(s["step"]))
        for key in ("exp_avg", "exp_avg_sq"):
            out[key][names[i]] = s[key].float().numpy()
    return out


def write_optimizer(state: dict, path: Path, rank: int, cfg) -> None:
    """The inverse of :func:`read_optimizer`: a ``torch.optim.AdamW.state_dict()`` the torch loop loads."""
    names = optimizer_names(cfg)
    decay = sum(1 for n in names if len(parameter_shapes(cfg)[n]) >= 2)
    t = cfg.train
    group = lambda ids, wd: {"weight_decay": wd, "lr": t.lr, "betas": (t.beta1, t.beta2), "eps": 1e-8,  # noqa
                             "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                             "differentiable": False, "fused": None, "decoupled_weight_decay": True, "params": ids}
    body = {i: {"step": torch.tensor(float(state["step"])), "exp_avg": torch.from_numpy(state["exp_avg"][n]),
                "exp_avg_sq": torch.from_numpy(state["exp_avg_sq"][n])}
            for i, n in enumerate(names) if n in state["exp_avg"]}
    groups = [group(list(range(decay)), t.weight_decay), group(list(range(decay, len(names))), 0.0)]
    torch.save({"state": body, "param_groups": groups}, path / f"optimizer_rank{rank}.pt")


def read_rng(path: Path, rank: int) -> dict:
    """numpy and python RNG states of a rank (the framework-neutral part of ``rng_rank{r}.pt``)."""
    rng = torch.load(path / f"rng_rank{rank}.pt", weights_only=False)
    return {"numpy": rng["numpy"], "python": rng["python"]}


def write_rng(state: dict, path: Path, rank: int, seed: int) -> None:
    """``rng_rank{r}.pt`` from numpy/python states; torch's own generator restarts from the run's seed, as
    ``backends.torch.train`` seeds it (the model draws its weights from numpy, so nothing else consumed it)."""
    torch_state = torch.Generator().manual_seed(seed + rank).get_state()
    torch.save({"torch": torch_state, "numpy": state["numpy"], "python": state["python"], "cuda": None},
               path / f"rng_rank{rank}.pt")
