"""Data-parallel sharding of the torch model with PyTorch's FSDP2 (``parallel.shard``), composed with expert
parallelism the way torchtitan composes them:

- the dense (non-expert) parameters of each block, and the embedding, final norm and LM head at the root, are
  sharded over every rank (the data-parallel group of the dense part is the world);
- each MoE block's experts are sharded over ``expert_dp``, the ranks that hold the same experts; with one copy
  of the experts per EP group (``expert_dp`` of one) there is nothing to shard and FSDP leaves them alone.

FSDP2 shards dim 0 of every tensor in ``torch.chunk`` pieces (an expert tensor [E_local, ...] so by whole
experts), keeps the shards as fp32 master weights, gathers a block's parameters before its forward and reduces
its gradients (reduce-scatter, in fp32) as its backward ends, overlapped with the blocks below. Compute stays
bf16 by ``torch.autocast``, as without sharding, so what is computed does not change.

Gradient scale: the objective of a W-rank run is the mean of the ranks' losses, so every gradient is divided by
W (``backends.torch.optim``). FSDP divides by its group's size, which is W for the dense part; the experts'
reduction over ``expert_dp`` is told to divide by W too, and unwrapped experts are divided by hand.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeGuard, cast

import torch
from torch import nn

from backends.torch.distributed import DistContext
from locmoe.config.schema import JobConfig

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

_MESH_DEVICE = {"cuda": "cuda", "npu": "npu"}


def sharded(cfg: JobConfig, ctx: DistContext) -> bool:
    """Whether ``parallel.shard`` applies: several processes (one rank, or one process emulating a topology,
    holds everything anyway)."""
    return cfg.parallel.shard != "none" and ctx.world_size > 1


def shard_model(model: nn.Module, cfg: JobConfig, ctx: DistContext) -> None:
    """Wrap ``model``'s blocks and root with ``fully_shard`` per ``parallel.shard`` (no-op when not ``sharded``).

    ``optimizer``: parameters gathered once per step, kept through the backward (ZeRO-2: gradients and AdamW
    state sharded). ``full``: gathered again for the backward (ZeRO-3: parameters sharded between uses)."""
    if not sharded(cfg, ctx):
        replicate_model(model, cfg, ctx)
        return
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    reshard = cfg.parallel.shard == "full"
    # fp32 gathers: the autocast casts per op as in the unsharded step (a bf16 param_dtype would round the
    # router's and the norms' weights too); fp32 reduction: the mean over ranks is not rounded
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    world = _mesh(ctx.world, ctx)
    experts = _mesh(ctx.expert_dp, ctx) if ctx.expert_dp.size > 1 else None
    W = float(ctx.world_size)
    for block in cast(Iterable[Any], model.layers):  # the model's blocks (nn.ModuleList)
        ignored = set()
        if hasattr(block, "moe"):
            if experts is not None:
                fully_shard(block.moe.experts, mesh=experts, reshard_after_forward=reshard, mp_policy=policy)
                block.moe.experts.set_gradient_divide_factor(W)
            else:
                ignored = set(block.moe.experts.parameters())
        fully_shard(block, mesh=world, reshard_after_forward=reshard, mp_policy=policy, ignored_params=ignored)
    # the root's parameters (embedding, final norm, LM head) are used at both ends of the step: kept gathered
    fully_shard(model, mesh=world, reshard_after_forward=False, mp_policy=policy, ignored_params=_unwrapped(model))
    # reduce-scatter with SUM, then divide: the divide factors FSDP otherwise folds into the collective
    # (NCCL's AVG and PREMUL_SUM) do not exist in Gloo, and one path everywhere is the path the tests run
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_force_sum_reduction_for_comms(True)


def replicate_model(model: nn.Module, cfg: JobConfig, ctx: DistContext) -> None:
    """``parallel.overlap_grad_reduce`` (``shard: none``, several processes): the dense parameters' gradients
    are all-reduced in buckets as the backward produces them, overlapped with the rest of it, by PyTorch's DDP
    (its composable ``replicate``, which leaves the module and its parameter names as they are). The experts
    are left out: their gradients are averaged over ``expert_dp``, not the world, after the backward
    (``backends.torch.optim.sync_gradients``). DDP divides by the world size, the objective's W."""
    if not (cfg.parallel.overlap_grad_reduce and cfg.parallel.shard == "none" and ctx.world_size > 1):
        return
    from torch.distributed._composable.replicate import replicate

    experts = [block.moe.experts for block in cast(Iterable[Any], model.layers) if hasattr(block, "moe")]
    replicate(model, ignored_modules=experts, process_group=ctx.world.handle)


def replicated(model: nn.Module) -> bool:
    """Whether ``replicate_model`` wrapped ``model`` (its dense gradients arrive reduced)."""
    from torch.distributed._composable.contract import _get_registry

    return "replicate" in (_get_registry(model) or {})


def _unwrapped(model: nn.Module) -> set:
    """Expert parameters no FSDP group manages (one copy of the experts per EP group)."""
    return {p for n, p in model.named_parameters() if ".moe.experts." in n and not is_sharded(p)}


def _mesh(group, ctx: DistContext):
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(group.handle, _MESH_DEVICE.get(ctx.device.type, "cpu"))


def is_sharded(t) -> TypeGuard[DTensor]:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor (a DTensor's local tensor, sharing its storage), else ``t``."""
    return t.to_local() if is_sharded(t) else t


def chunk_range(rows: int, parts: int, index: int) -> tuple[int, int]:
    """Rows [start, stop) of ``torch.chunk(rows, parts)``'s piece ``index`` (FSDP2's and DTensor's Shard(0)):
    pieces of ceil(rows / parts), the last ones short or empty."""
    size = -(-rows // parts)
    start = min(index * size, rows)
    return start, min(start + size, rows)


def shard_rows(t: torch.Tensor, group_size: int, index: int) -> torch.Tensor:
    """The dim-0 piece of a full tensor that rank ``index`` of a group of ``group_size`` holds."""
    start, stop = chunk_range(t.shape[0], group_size, index)
    return t[start:stop]


def reshard_all(model: nn.Module) -> None:
    """Every FSDP module back to its shards (a module kept gathered after its forward holds whole tensors)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every sharded parameter gathered for code that runs outside the blocks' own forward (the placement's
    node preference calls a block's halves directly), and sharded again after it."""
    from torch.distributed.fsdp import FSDPModule

    wrapped = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in wrapped:
        m.unshard()
    try:
        yield
    finally:
        for m in wrapped:
            m.reshard()
