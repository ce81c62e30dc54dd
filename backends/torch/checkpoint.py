"""Checkpoints of the torch backend, in the shared directory format of ``locmoe.checkpoint.directory`` (format 2):

    model.safetensors              every parameter by its ``locmoe.model_spec`` name, experts consolidated over the
                                   EP group, fp32 (rank 0 writes it; any layout and the MindSpore backend can
                                   read it)
    optimizer_rank{r}.safetensors  AdamW moments of rank r by parameter name (exact resume needs the same layout)
    optimizer_rank{r}.json         its step counts and param-group hyper-parameters
    rng_rank{r}.json               torch (as bytes) / numpy / python RNG states of rank r
    train_state.json               step, job config, layout (and tokenizer.json when the run has a file)

A sharded run (``parallel.shard``, several ranks) writes ``sharded/`` instead of the model and optimizer files:
every rank its own shards, in parallel (``backends.torch.sharded_checkpoint``); it resumes on another layout.

Nothing is unpickled. Format 1 kept ``optimizer_rank{r}.pt`` and ``rng_rank{r}.pt`` (pickles): they are read
only under ``--trust-checkpoint``, and then with torch's restricted unpickler (``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from backends.torch.collectives import all_gather_rows
from backends.torch.distributed import DistContext
from backends.torch.sharded_checkpoint import (
    copy_full_,
    init_optimizer_state,
    load_sharded,
    save_sharded,
)
from backends.torch.sharding import local, reshard_all, sharded
from locmoe.checkpoint import files
from locmoe.checkpoint.directory import (
    CheckpointError,
    format_version,
    layout_record,
    read_train_state,
    reading,
    require_trust,
    safe_tensors,
)
from locmoe.checkpoint.sharded_weights import is_sharded_checkpoint
from locmoe.model_spec import is_expert_param, parameter_shapes
from locmoe.training.finite import nonfinite_error


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


def first_nonfinite(model, optimizer) -> str | None:
    """The name of the first parameter (or AdamW moment) of this rank holding NaN/Inf, else None."""
    names = {id(p): n for n, p in model.named_parameters()}
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(local(p.detach())).all()):
            return name
    for p, s in optimizer.state.items():
        for key, v in s.items():
            if torch.is_tensor(v) and v.dim() > 0 and not bool(torch.isfinite(local(v)).all()):
                return f"{key} of {names.get(id(p), '?')}"
    return None


def check_finite(model, optimizer, ctx: DistContext, step: int) -> None:
    """Before sealing: every rank's weights and moments are finite, or every rank stops (NonFiniteError)."""
    from locmoe.atomic_io import fault_due

    if sharded(model.cfg, ctx):
        reshard_all(model)  # parallel.shard optimizer keeps a block gathered after a forward without backward
    if fault_due("nan_weights", step):  # test hook: the update of this step diverged
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")
    bad = first_nonfinite(model, optimizer)
    flag = torch.tensor([0.0 if bad is None else 1.0], device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(flag)
    if float(flag) > 0:
        raise nonfinite_error(model.cfg.train.out_dir, step, bad, ctx.rank)


def optimizer_files_state(model, optimizer) -> tuple[dict, dict, list, dict]:
    """(tensors, scalars, groups, scalar dtypes) of ``optimizer.state_dict()`` by parameter name."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors, scalars, dtypes = {}, {}, {}
    for p, s in optimizer.state.items():
        name = names[id(p)]
        for key, v in s.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{key}.{name}"] = v.detach().cpu().contiguous()
            elif torch.is_tensor(v):
                scalars.setdefault(name, {})[key] = v.item()
                dtypes[key] = str(v.dtype).removeprefix("torch.")
            else:
                scalars.setdefault(name, {})[key] = v
    groups = [
        {**{k: _plain(v) for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    return tensors, scalars, groups, dtypes


def _plain(v):
    """A param-group value as JSON (a tensor hyper-parameter as its number, a tuple as a list)."""
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def write_rank_files(model, optimizer, ctx: DistContext, tmp: Path, step: int) -> None:
    """This rank's files of step ``step``'s checkpoint into ``tmp``: its optimiser and RNG states (rank 0 also
    ``model.safetensors``), or on a sharded run its shards of everything (``sharded/``)."""
    sharded_run = sharded(model.cfg, ctx)
    if sharded_run:
        save_sharded(model, optimizer, tmp, step)
    else:
        state = consolidated_state(model, ctx)
        files.write_optimizer_files(tmp, ctx.rank, *optimizer_files_state(model, optimizer), save=save_file)
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None
    # numpy's stubs type get_state() with no argument as its dict form; the legacy default gives the tuple
    numpy_state = cast(tuple, np.random.get_state())
    files.write_rng_file(
        files.rng_to_json(numpy_state, random.getstate(), torch=torch.get_rng_state().tolist(), cuda=cuda),
        tmp,
        ctx.rank,
    )
    if ctx.is_main and not sharded_run:
        files.save_tensor_file(save_file, state, tmp / "model.safetensors")


def load_model_weights(model, path: Path) -> None:
    """Copy ``model.safetensors`` into the model; this rank takes its own experts."""
    file = path / "model.safetensors"
    expected = set(parameter_shapes(model.cfg))
    own = model.state_dict()
    experts = list(model.expert_ids())
    with safe_tensors(file, "pt") as f:
        found = set(f.keys())
        if found != expected:
            raise CheckpointError(
                f"{path} was written for another model: missing {sorted(expected - found)[:5]}, "
                f"unexpected {sorted(found - expected)[:5]}"
            )
        with torch.no_grad():
            for name in expected:
                with reading(file):
                    t = f.get_tensor(name)
                if is_expert_param(name):
                    t = t[experts]
                if tuple(t.shape) != tuple(own[name].shape):
                    raise CheckpointError(
                        f"{path}: {name} has shape {tuple(t.shape)}, the model expects {tuple(own[name].shape)}"
                    )
                copy_full_(own[name], t)


def load_checkpoint(path: Path, model, optimizer, ctx: DistContext) -> tuple[int, dict]:
    """Restore weights, optimiser and RNG; returns (step to continue from, train_state). The optimiser's
    hyper-parameters stay this run's (the config's); ``locmoe.training.resume_check`` reported any change."""
    state = read_train_state(path, ctx.layout, "torch")
    if is_sharded_checkpoint(path):
        load_sharded(path, model, optimizer)
        if state["layout"] != layout_record(ctx.layout):
            return state["step"], state  # resharded: the RNGs start from the run's seed, as the ranks are others
        np_state, py_state, torch_state, cuda = _rng_states(path, ctx.rank)
        _set_rng(path, ctx.rank, np_state, py_state, torch_state, cuda)
        return state["step"], state
    load_model_weights(model, path)
    if format_version(path) == 1:
        optimizer.load_state_dict(_current_groups(_legacy_load(path / f"optimizer_rank{ctx.rank}.pt"), optimizer))
        rng = _legacy_load(path / f"rng_rank{ctx.rank}.pt")
        np_state, py_state, torch_state, cuda = rng["numpy"], rng["python"], rng["torch"], rng["cuda"]
    else:
        _load_optimizer(_optimizer_state_dict(path, ctx.rank, model, optimizer), model, optimizer, ctx)
        np_state, py_state, torch_state, cuda = _rng_states(path, ctx.rank)
    _set_rng(path, ctx.rank, np_state, py_state, torch_state, cuda)
    return state["step"], state


def _load_optimizer(saved: dict, model, optimizer, ctx: DistContext) -> None:
    """A format-2 state dict of whole tensors into AdamW; into a sharded run's AdamW, each rank its pieces."""
    if not sharded(model.cfg, ctx):
        optimizer.load_state_dict(saved)
        return
    init_optimizer_state(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with torch.no_grad():
        for index, entry in saved["state"].items():
            live = optimizer.state[params[index]]
            for key, v in entry.items():
                if torch.is_tensor(live[key]):
                    copy_full_(live[key], torch.as_tensor(v))
                else:
                    live[key] = v


def _rng_states(path: Path, rank: int) -> tuple:
    """(numpy, python, torch, cuda) RNG states of a format-2 ``rng_rank{r}.json``."""
    np_state, py_state, rest = files.read_rng_file(path, rank)
    file = path / files.RNG_FILE.format(rank=rank)
    torch_state = torch.tensor(files.byte_list(rest.get("torch"), file, "'torch'"), dtype=torch.uint8)
    cuda = rest.get("cuda")
    cuda = None if cuda is None else [torch.tensor(files.byte_list(c, file, "'cuda'"), dtype=torch.uint8) for c in cuda]
    return np_state, py_state, torch_state, cuda


def _set_rng(path: Path, rank: int, np_state, py_state, torch_state, cuda) -> None:
    with reading(path / files.RNG_FILE.format(rank=rank)):
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)


def _optimizer_state_dict(path: Path, rank: int, model, optimizer) -> dict:
    """``optimizer.state_dict()`` form of the format-2 files, with this run's param groups."""
    meta, tensors = files.read_optimizer_meta(path, rank), files.read_optimizer_tensors(path, rank, "pt")
    file = path / files.OPTIMIZER_META.format(rank=rank)
    dtypes = meta["scalar_dtypes"]
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    state: dict[int, dict] = {}
    for name, scalars in meta["scalars"].items():
        if name not in index:
            raise CheckpointError(f"{file}: state of {name!r}, which this model does not have")
        entry = state.setdefault(index[name], {})
        for key, v in scalars.items():
            if key in dtypes:
                if not isinstance(v, (int, float)) or not hasattr(torch, str(dtypes[key])):
                    raise CheckpointError(f"{file}: scalar {key} of {name} is {v!r} of dtype {dtypes[key]!r}")
                v = torch.tensor(v, dtype=getattr(torch, dtypes[key]))
            entry[key] = v
    for key, by_name in tensors.items():
        for name, t in by_name.items():
            if name not in index:
                raise CheckpointError(
                    f"{path / files.OPTIMIZER_TENSORS.format(rank=rank)}: {key} of {name!r}, "
                    "which this model does not have"
                )
            state.setdefault(index[name], {})[key] = t
    return _current_groups({"state": state}, optimizer)


def _current_groups(saved: dict, optimizer) -> dict:
    """A state_dict with this run's param groups (hyper-parameters from the config, not the checkpoint)."""
    return {"state": saved["state"], "param_groups": optimizer.state_dict()["param_groups"]}


def _param_names(model, optimizer) -> list[str]:
    """Parameter names in the optimiser's index order (its state_dict numbers parameters group by group)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _legacy_load(file: Path):
    """A format-1 pickle, only when trusted, and then with torch's restricted unpickler: tensors, containers
    and numpy's RNG-state array types, nothing that runs code."""
    require_trust(file)
    # numpy's stubs do not declare np.core (present at run time in numpy 1.x)
    allowed = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]  # pyright: ignore[reportAttributeAccessIssue]
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on the pickle protocol is not the user's business
            return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{file} cannot be read: torch's restricted unpickler refuses it ({_why(err)}); "
            "a checkpoint of locmoe holds only tensors and RNG states, so it may have been "
            "tampered with"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"{file} cannot be read ({type(err).__name__}: {str(err)[:120]}); the checkpoint is corrupt"
        ) from None


def _why(err: Exception) -> str:
    """The sentence of torch's weights-only error that says what it refused (its text around it is advice)."""
    core = str(err).split("trusted source.", 1)[-1].split("Check the documentation", 1)[0]
    core = " ".join(core.split("WeightsUnpickler error:", 1)[-1].split())
    return core[:160] or "an object that is not a tensor"


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- conversion (locmoe convert)


def optimizer_names(cfg) -> list[str]:
    """Parameter names in the order of ``make_optimizer``'s state indices (decay group, then the rest),
    read from a model built on the meta device (no memory; the order does not depend on the layout)."""
    from backends.torch.collectives import Group
    from backends.torch.distributed import ExpertParallel
    from backends.torch.moe_layer import MoELayer
    from backends.torch.optim import make_optimizer
    from locmoe.parallel.topology import ExpertPlacement, Topology
    from models.pangu_sigma_torch import PanGuSigma

    topo, one = Topology(1, 1), Group(None, (0,), (0,), 0)
    placement = ExpertPlacement.from_config(
        dataclasses.replace(cfg.parallel, placement="contiguous", placement_table=[]), cfg.moe.num_experts, topo
    )
    with torch.device("meta"):
        ep = ExpertParallel(
            topology=topo, placement=placement, rank=0, group=one, intra=one, inter=one, scheme=cfg.parallel.dispatch
        )
        model = PanGuSigma(cfg, ep, MoELayer)
    index = {id(p): n for n, p in model.named_parameters()}
    return [index[id(p)] for g in make_optimizer(model, cfg.train).param_groups for p in g["params"]]


def read_optimizer(path: Path, rank: int, cfg) -> dict:
    """Rank ``rank``'s AdamW state as {"step", "exp_avg": {name: array}, "exp_avg_sq": {...}} (numpy)."""
    if format_version(path) != 1:
        return files.read_adamw(path, rank)
    saved = _legacy_load(path / f"optimizer_rank{rank}.pt")
    names, out = optimizer_names(cfg), {"step": 0, "exp_avg": {}, "exp_avg_sq": {}}
    for i, s in saved["state"].items():
        out["step"] = max(out["step"], int(s["step"]))
        for key in files.MOMENTS:
            out[key][names[i]] = s[key].float().numpy()
    return out


def write_optimizer(state: dict, path: Path, rank: int, cfg) -> None:
    """The inverse of :func:`read_optimizer`: the files of a ``torch.optim.AdamW`` the torch loop loads."""
    names = optimizer_names(cfg)
    shapes = parameter_shapes(cfg)
    t = cfg.train
    group = lambda ps, wd: {  # noqa: E731
        "weight_decay": wd,
        "lr": t.lr,
        "betas": [t.beta1, t.beta2],
        "eps": 1e-8,
        "amsgrad": False,
        "foreach": None,
        "maximize": False,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": True,
        "params": ps,
    }
    held = [n for n in names if n in state["exp_avg"]]
    tensors = {
        f"{key}.{n}": torch.from_numpy(np.ascontiguousarray(state[key][n])) for key in files.MOMENTS for n in held
    }
    scalars = {n: {"step": float(state["step"])} for n in held}
    groups = [
        group([n for n in held if len(shapes[n]) >= 2], t.weight_decay),
        group([n for n in held if len(shapes[n]) < 2], 0.0),
    ]
    files.write_optimizer_files(path, rank, tensors, scalars, groups, {"step": "float32"}, save=save_file)


def read_rng(path: Path, rank: int) -> dict:
    """numpy and python RNG states of a rank (the framework-neutral part of its RNG file)."""
    if format_version(path) == 1:
        rng = _legacy_load(path / f"rng_rank{rank}.pt")
        return {"numpy": rng["numpy"], "python": rng["python"]}
    np_state, py_state, _ = files.read_rng_file(path, rank)
    return {"numpy": np_state, "python": py_state}


def write_rng(state: dict, path: Path, rank: int, seed: int) -> None:
    """``rng_rank{r}.json`` from numpy/python states; torch's own generator restarts from the run's seed, as
    ``backends.torch.train`` seeds it (the model draws its weights from numpy, so nothing else consumed it)."""
    torch_state = torch.Generator().manual_seed(seed + rank).get_state()
    files.write_rng_file(
        files.rng_to_json(state["numpy"], state["python"], torch=torch_state.tolist(), cuda=None), path, rank
    )
