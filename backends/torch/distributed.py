"""Devices and process groups from the launcher's environment: gloo (CPU), NCCL (CUDA), HCCL (Ascend NPU).

Every process creates every group in the same order (``new_group`` is collective); each keeps its own.
One process with ``parallel.nodes x devices_per_node > 1`` *emulates* that expert-parallel group: it holds
every expert and treats its batch as the ranks' batches, rank 0's first.

Timeouts: every group, not only the default one, gets ``parallel.timeout_s`` (``new_group`` would otherwise
take torch's default, 30 min for gloo, 10 min for NCCL, and the MoE all-to-alls run on the sub-groups). A
gloo collective then raises after ``timeout_s``, or at once when a peer's socket closes, and
``backends.torch.liveness`` turns that into one line naming the rank that stopped. NCCL collectives are
asynchronous and are not waited on by the host (``TORCH_NCCL_BLOCKING_WAIT`` would make every ``wait()`` a
host sync): their watchdog tears the process down after the group's timeout (``TORCH_NCCL_ASYNC_ERROR_HANDLING``,
default 3; torchrun sets 1), so NCCL groups get ``timeout_s + NCCL_MARGIN_S`` and the heartbeat's verdict,
due ``timeout_s`` after a rank fell silent, comes first.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional, cast

import torch
import torch.distributed as dist

from backends.torch.collectives import Group
from backends.torch.liveness import liveness_store, start_liveness
from locmoe import liveness
from locmoe.config import ConfigError
from locmoe.config.schema import ParallelConfig
from locmoe.parallel.context import DistContext, ExpertParallel, expert_parallel  # noqa: F401 (re-exported)
from locmoe.parallel.topology import LaunchEnv, ParallelLayout, Topology, layout_from_config
from locmoe.planning.memory_plan import host_memory

NCCL_MARGIN_S = 30.0  # NCCL's watchdog waits this much longer than the heartbeat verdict (module docstring)


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
            raise ConfigError(
                "parallel.device",
                "'npu' needs torch-npu and an Ascend device: install it with "
                "`pip install 'locmoe[npu]'` on a machine with the CANN toolkit",
            )
        torch.npu.set_device(local_rank)  # pyright: ignore[reportAttributeAccessIssue]  # torch.npu: registered by torch_npu
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def device_memory(device: torch.device) -> Optional[tuple[int, str]]:
    """(bytes free, where) for the memory plan checked before anything is built: the host's on CPU, the
    device's own on CUDA and NPU (where torch-npu can tell)."""
    if device.type == "cpu":
        return host_memory()
    module = getattr(torch, device.type, None)
    if module is None or not hasattr(module, "mem_get_info"):
        return None
    return int(module.mem_get_info(device)[0]), f"{device} (free device memory)"


def _npu_available() -> bool:
    try:
        import torch_npu  # pyright: ignore[reportMissingImports]  # noqa: F401  (registers the npu device with torch)
    except ImportError:
        return False
    return bool(torch.npu.is_available())  # pyright: ignore[reportAttributeAccessIssue]  # torch.npu: registered by torch_npu


def _backend_for(device: torch.device) -> str:
    return {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")


def init_distributed(parallel: ParallelConfig, env: Optional[LaunchEnv] = None) -> DistContext:
    """Set up the device, the default process group and the sub-groups; idempotent within a process."""
    env = env or LaunchEnv.from_environ()
    layout = layout_from_config(parallel, env)
    device = resolve_device(parallel.device, int(os.environ.get("LOCAL_RANK", 0)))
    backend = _backend_for(device)
    timeout = group_timeout(parallel, backend)
    store = liveness_store(parallel, env)
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timeout)
    if env.world_size > 1:
        start_liveness(parallel, env, store)
    groups = _make_groups(layout, timeout) if env.world_size > 1 else None
    single = Group(None, (0,), (0,), 0)
    if groups is None:
        return DistContext.one_process(layout, device, single)
    return DistContext(layout=layout, device=device, emulated=False, **groups)


def group_timeout(parallel: ParallelConfig, backend: str) -> datetime.timedelta:
    """The timeout of every process group: ``parallel.timeout_s``, + ``NCCL_MARGIN_S`` for the device backends
    whose watchdog tears the process down (NCCL; HCCL through torch-npu works the same way)."""
    return datetime.timedelta(seconds=parallel.timeout_s + (NCCL_MARGIN_S if backend in ("nccl", "hccl") else 0.0))


def _make_groups(layout: ParallelLayout, timeout: datetime.timedelta) -> dict:
    topo, world = layout.topology, layout.world_size
    ep_size = topo.world_size
    mine = {}
    add = lambda name, ranks, topo_, start_: _add(mine, name, ranks, layout, topo_, start_, timeout)  # noqa: E731
    for start in range(0, world, ep_size):
        add("ep", list(range(start, start + ep_size)), topo, start)
        for members in topo.intra_node_groups():
            add("intra", [start + r for r in members], topo, start)
        for members in topo.inter_node_groups():
            add("inter", [start + r for r in members], topo, start)
    for j in range(ep_size):
        add("expert_dp", list(range(j, world, ep_size)), None, 0)
    add("world", list(range(world)), None, 0)
    return mine  # {"ep", "intra", "inter", "expert_dp", "world"}: this rank's group of each kind


def _add(
    mine: dict,
    name: str,
    ranks: list,
    layout: ParallelLayout,
    topo: Optional[Topology],
    start: int,
    timeout: datetime.timedelta,
) -> None:
    handle = dist.new_group(ranks, timeout=timeout) if len(ranks) > 1 else None
    if layout.rank in ranks:
        local = [r - start for r in ranks] if topo is not None else ranks
        nodes = tuple(int(topo.node_of(r)) for r in local) if topo is not None else tuple(0 for _ in ranks)
        member = cast(Optional[dist.ProcessGroup], handle)  # typed | int: what non-members get
        mine[name] = Group(member, tuple(local), nodes, ranks.index(layout.rank))


def shutdown() -> None:
    monitor = liveness.active()
    if monitor is not None:
        monitor.leave("done")
    if dist.is_initialized():
        dist.destroy_process_group()
