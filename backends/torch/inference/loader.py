"""Build an :class:`InferenceModel` from a checkpoint directory and an exported router directory — no
training code: the config comes from the checkpoint, the routers and the expert placement from the export.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from backends.torch.distributed import ExpertParallel, init_distributed
from backends.torch.inference.model import InferenceModel
from locmoe.checkpoint.directory import CheckpointError, load_state, resolve
from locmoe.checkpoint.sharded_weights import model_tensors, read_experts
from locmoe.config import config_from_dict
from locmoe.config.schema import JobConfig
from locmoe.export import load_router
from locmoe.inference.deployment import check_export_matches, serving_placements
from locmoe.inference.errors import InferenceError
from locmoe.model_spec import init_rule, is_expert_param, parameter_shapes
from locmoe.parallel.topology import ExpertPlacement, LaunchEnv, Topology

CAPACITY = ("dropless", "as_trained")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_inference_model(
    checkpoint: str | Path,
    router_dir: str | Path,
    device: str = "auto",
    dtype: Optional[str] = None,
    capacity: str = "dropless",
) -> InferenceModel:
    """The model of ``checkpoint`` with the routers of ``router_dir``, expert-parallel over the processes
    the launcher started (torchrun: NCCL on CUDA, gloo on CPU).

    Args:
        dtype: float32 / bfloat16 / float16; None = bfloat16 on CUDA, float32 on CPU.
        capacity: dropless (serving default: no token loses an expert) or as_trained (the checkpoint's
            capacity rule, which only reproduces training when every rank holds the same number of tokens).
    """
    if capacity not in CAPACITY:
        raise InferenceError(f"capacity {capacity!r} is not one of {CAPACITY}")
    export = load_router(router_dir)  # first: a bad export is one line, before "using checkpoint ..." is printed
    path = resolve(checkpoint)
    state = load_state(path)
    cfg = config_from_dict(state["config"])
    with model_tensors(path) as f:
        ckpt_router = {k: f.get_tensor(k) for k in export.tensors if k in f.keys()}
    check_export_matches(export.manifest, cfg, state["step"], export.tensors, ckpt_router)
    env = LaunchEnv.from_environ()
    topo, placements = serving_placements(export.manifest, env.world_size)
    if capacity == "dropless":
        cfg = dataclasses.replace(
            cfg,
            moe=dataclasses.replace(
                cfg.moe, capacity=dataclasses.replace(cfg.moe.capacity, mode="dropless"), check_finite=False
            ),
        )
    # cast and move the (uninitialised) model first, then copy each tensor straight into its device copy:
    # no full-size fp32 model on the host, which is most of the start-up time at GPU sizes
    model = finish(build_inference_model(cfg, topo, placements, device, env), dtype)
    load_weights(model, cfg, path, export.tensors)
    model.checkpoint = path  # where serving finds the run's tokenizer copy (locmoe.checkpoint.directory)
    return model


def build_inference_model(
    cfg: JobConfig,
    topo: Topology,
    placements: dict[int, ExpertPlacement],
    device: str = "auto",
    env: Optional[LaunchEnv] = None,
) -> InferenceModel:
    """Set up the devices and process groups for ``topo`` and an (uninitialised) model on the CPU (its
    weights are whatever memory held: load them, or draw them with :func:`random_weights`)."""
    parallel = dataclasses.replace(
        cfg.parallel,
        nodes=topo.num_nodes,
        devices_per_node=topo.devices_per_node,
        expert_parallel_size=0,
        device=device,
    )
    ctx = init_distributed(parallel, env)
    eps = {
        i: ExpertParallel(
            topology=topo,
            placement=pl,
            rank=ctx.layout.ep_rank,
            group=ctx.ep,
            intra=ctx.intra,
            inter=ctx.inter,
            scheme=parallel.dispatch,
        )
        for i, pl in placements.items()
    }
    with _no_default_init():
        model = InferenceModel(cfg, eps, ctx.ep)
    model.device = ctx.device
    return model


@contextlib.contextmanager
def _no_default_init():
    """Skip nn.Linear's / nn.Embedding's random init while building: every weight is loaded (or drawn by
    :func:`random_weights`) right after, and the draws cost seconds at GPU sizes."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters

    def skip(self: nn.Module) -> None:
        pass

    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = skip
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def finish(model: InferenceModel, dtype: Optional[str]) -> InferenceModel:
    """Cast (None: bfloat16 on CUDA, float32 elsewhere), move to the model's device, eval mode."""
    dev = model.device
    dt = DTYPES[dtype] if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    return cast_parameters(model, dt).to(dev).eval()


def random_weights(model: InferenceModel, seed: int) -> InferenceModel:
    """Benchmarks without a checkpoint: every parameter drawn by the spec's init rule on the model's device
    (call after :func:`finish`); replicated weights are the same on every rank, each rank draws its own
    experts."""
    dev = model.rope_cos.device
    shared = torch.Generator(device=dev).manual_seed(seed)
    own = torch.Generator(device=dev).manual_seed(seed + 1 + model.group.my_index)
    with torch.no_grad():
        for name, p in model.named_parameters():
            kind, std = init_rule(name, model.cfg.model)
            if kind == "ones":
                p.fill_(1.0)
            elif kind == "zeros":
                p.zero_()
            else:
                p.normal_(0.0, std, generator=own if is_expert_param(name) else shared)
    return model


def load_weights(model: InferenceModel, cfg: JobConfig, path: Path, router_tensors: dict) -> None:
    """Copy every spec tensor of checkpoint ``path`` into the model; each MoE layer reads only its own experts,
    the routers' tensors come from the export."""
    own = model.state_dict()
    with model_tensors(path) as f:
        names = set(f.keys())
        expected = set(parameter_shapes(cfg))
        if names != expected:
            raise CheckpointError(
                f"{path} was written for another model: missing {sorted(expected - names)[:5]},"
                f" unexpected {sorted(names - expected)[:5]}"
            )
        with torch.no_grad():
            for name in sorted(expected):
                if name in router_tensors:
                    t = router_tensors[name]
                elif is_expert_param(name):
                    t = read_experts(f, name, list(model.blocks[int(name.split(".")[1])].moe.ep.local_experts))
                else:
                    t = f.get_tensor(name)
                own[name].copy_(torch.from_numpy(np.ascontiguousarray(t)).to(own[name].dtype))


def cast_parameters(model: InferenceModel, dtype: torch.dtype) -> InferenceModel:
    """Parameters to ``dtype``; buffers keep theirs (the router's float64 angle state, fp32 rotary tables)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model
