"""Devices and process groups from the launcher's environment: gloo (CPU), NCCL (CUDA), HCCL (Ascend NPU).

Every process creates every group in the same order (``new_group`` is collective); each keeps its own.
One process with ``parallel.nodes x devices_per_node > 1`` *emulates* that expert-parallel group: it holds
every expert and treats its batch as the ranks' batches, rank 0's first.
"""
from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist

from backends.torch.collectives import Group
from locmoe.config.loader import ConfigError
from locmoe.config.schema import ParallelConfig
from locmoe.parallel_context import DistContext, ExpertParallel  # noqa: F401 (re-exported)
from locmoe.topology import ExpertPlacement, LaunchEnv, ParallelLayout, Topology, layout_from_config


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``parallel.device`` → torch device (ascend → npu, gpu → cuda); a missing runtime is a clear error."""
    name = {"ascend": "npu", "gpu": "cuda"}.get(name, name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else ("npu" if _npu_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("parallel.device", "'cuda' was asked for, but torch sees no CUDA device")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if name == "npu":
        if not _npu_available():
            raise ConfigError("parallel.device", "'npu' needs torch-npu and an Ascend device: install it with "
                              "`pip install 'locmoe[npu]'` on a machine with the CANN toolkit")
        torch.npu.set_device(local_rank)
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def _npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers the npu device with torch)
    except ImportError:
        return False
    return bool(torch.npu.is_available())


def _backend_for(device: torch.device) -> str:
    return {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")


def init_distributed(parallel: ParallelConfig, env: Optional[LaunchEnv] = None) -> DistContext:
    """Set up the device, the default process group and the sub-groups; idempotent within a process."""
    env = env or LaunchEnv.from_environ()
    layout = layout_from_config(parallel, env)
    device = resolve_device(parallel.device, int(os.environ.get("LOCAL_RANK", 0)))
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(_backend_for(device), rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=parallel.timeout_s))
    groups = _make_groups(layout) if env.world_size > 1 else None
    single = Group(None, (0,), (0,), 0)
    if groups is None:
        return DistContext(layout, device, single, single, single, single, single, layout.emulated)
    return DistContext(layout, device, *groups, emulated=False)


def _make_groups(layout: ParallelLayout) -> tuple:
    topo, world = layout.topology, layout.world_size
    ep_size = topo.world_size
    mine = {}
    for start in range(0, world, ep_size):
        _add(mine, "ep", list(range(start, start + ep_size)), layout, topo, start)
        for members in topo.intra_node_groups():
            _add(mine, "intra", [start + r for r in members], layout, topo, start)
        for members in topo.inter_node_groups():
            _add(mine, "inter", [start + r for r in members], layout, topo, start)
    for j in range(ep_size):
        _add(mine, "expert_dp", list(range(j, world, ep_size)), layout, None, 0)
    _add(mine, "world", list(range(world)), layout, None, 0)
    return mine["ep"], mine["intra"], mine["inter"], mine["expert_dp"], mine["world"]


def _add(mine: dict, name: str, ranks: list, layout: ParallelLayout, topo: Optional[Topology], start: int) -> None:
    handle = dist.new_group(ranks) if len(ranks) > 1 else None
    if layout.rank in ranks:
        local = [r - start for r in ranks] if topo is not None else ranks
        nodes = tuple(int(topo.node_of(r)) for r in local) if topo is not None else tuple(0 for _ in ranks)
        mine[name] = Group(handle, tuple(local), nodes, ranks.index(layout.rank))


def expert_parallel(ctx: DistContext, parallel: ParallelConfig, num_experts: int) -> ExpertParallel:
    placement = ExpertPlacement.from_config(parallel, num_experts, ctx.layout.topology)
    return ExpertParallel(ctx.layout.topology, placement, ctx.layout.ep_rank, ctx.emulated, ctx.ep, ctx.intra,
                          ctx.inter, parallel.dispatch)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
