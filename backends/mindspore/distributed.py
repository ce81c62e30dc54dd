"""Device, execution mode and communication groups from the launcher's environment (msrun, or none).

``init_distributed`` sets the device from ``parallel.device`` (``mindspore.set_device``), PyNative mode,
``mindspore.communication.init()`` when msrun started several workers, and the EP, intra-node, inter-node,
expert-data-parallel and world groups from ``locmoe.parallel.topology`` through ``create_group``. One process with
``parallel.nodes x devices_per_node > 1`` *emulates* that expert-parallel group: it holds every expert and
treats its batch as the ranks' batches, rank 0's first. ``parallel.timeout_s`` becomes MindSpore's own
timeouts and the workers' heartbeats (``backends.mindspore.liveness``: what MindSpore allows, and what not).
"""

from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import communication as comm

from backends.mindspore.collectives import Group
from backends.mindspore.liveness import scheduler_verdict, set_timeouts, start_liveness
from locmoe import liveness
from locmoe.config import ConfigError
from locmoe.config.schema import ParallelConfig
from locmoe.parallel.context import DistContext, ExpertParallel, expert_parallel  # noqa: F401 (re-exported)
from locmoe.parallel.topology import LaunchEnv, ParallelLayout, Topology, layout_from_config

DEVICE_TARGETS = {"cpu": "CPU", "ascend": "Ascend", "npu": "Ascend", "gpu": "GPU", "cuda": "GPU"}
_created: set = set()  # groups this process has created (create_group must not run twice)


def resolve_device(name: str) -> str:
    """``parallel.device`` → MindSpore device target; ``auto`` = Ascend, else GPU, else CPU."""
    if name == "auto":
        from mindspore import hal

        return next((t for t in ("Ascend", "GPU") if hal.is_available(t)), "CPU")
    if name not in DEVICE_TARGETS:
        raise ConfigError(
            "parallel.device", f"{name!r} is not a MindSpore device; allowed: {['auto', *DEVICE_TARGETS]}"
        )
    target = DEVICE_TARGETS[name]
    if target != "CPU":
        from mindspore import hal

        if not hal.is_available(target):
            raise ConfigError(
                "parallel.device",
                f"{name!r} was asked for, but this MindSpore build sees no "
                f"{target} device: install the MindSpore package for {target} (with its drivers) "
                "or set parallel.device: cpu",
            )
    return target


def setup_runtime(device: str = "CPU") -> None:
    """Device target and execution mode of this process (call before any tensor is made).

    PyNative mode (``parallel.jit`` compiles the dense blocks; the model builder applies it). On CPU,
    operators launch synchronously: the dispatcher reads split sizes on the host every layer, and an
    asynchronous launch made each host read cost ~2.8 ms instead of ~0.26 ms (measured, 2 busy cores).
    """
    ms.set_device(device)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    if device == "CPU":
        ms.runtime.launch_blocking()


def init_distributed(parallel: ParallelConfig, env: Optional[LaunchEnv] = None) -> DistContext:
    """Set up the device, the communication runtime and the groups; idempotent within a process."""
    env = env or LaunchEnv.from_environ()
    layout = layout_from_config(parallel, env)
    device = resolve_device(parallel.device)
    setup_runtime(device)
    if env.world_size == 1:
        single = Group(None, (0,), (0,), 0)
        return DistContext.one_process(layout, device, single)
    if env.launcher != "msrun":
        raise ConfigError(
            "parallel.backend",
            f"mindspore with {env.world_size} ranks must be started by msrun, "
            f"not {env.launcher} (see scripts/train_msrun.sh)",
        )
    if "world" not in _created:
        set_timeouts(parallel.timeout_s)
        with scheduler_verdict():
            comm.init()
        _created.add("world")
    groups = _make_groups(layout)
    start_liveness(parallel, env)
    return DistContext(layout=layout, device=device, emulated=False, **groups)


def _make_groups(layout: ParallelLayout) -> dict:
    topo, world = layout.topology, layout.world_size
    ep_size = topo.world_size
    mine = {}
    for start in range(0, world, ep_size):
        _add(mine, "ep", f"ep{start}", list(range(start, start + ep_size)), layout, topo, start)
        for n, members in enumerate(topo.intra_node_groups()):
            _add(mine, "intra", f"intra{start}_{n}", [start + r for r in members], layout, topo, start)
        for g, members in enumerate(topo.inter_node_groups()):
            _add(mine, "inter", f"inter{start}_{g}", [start + r for r in members], layout, topo, start)
    for j in range(ep_size):
        _add(mine, "expert_dp", f"edp{j}", list(range(j, world, ep_size)), layout, None, 0)
    _add(mine, "world", None, list(range(world)), layout, None, 0)
    return mine  # {"ep", "intra", "inter", "expert_dp", "world"}: this rank's group of each kind


def _add(
    mine: dict,
    kind: str,
    name: Optional[str],
    ranks: list,
    layout: ParallelLayout,
    topo: Optional[Topology],
    start: int,
) -> None:
    """Create the group on its members (create_group runs on the members only) and keep it if it is mine."""
    if layout.rank not in ranks:
        return
    if name is None or len(ranks) == layout.world_size:
        handle = comm.GlobalComm.WORLD_COMM_GROUP
    elif len(ranks) == 1:
        handle = None
    else:
        handle = f"locmoe_{name}"
        if handle not in _created:
            comm.create_group(handle, ranks)
            _created.add(handle)
    local = [r - start for r in ranks] if topo is not None else ranks
    nodes = tuple(int(topo.node_of(r)) for r in local) if topo is not None else tuple(0 for _ in ranks)
    mine[kind] = Group(handle, tuple(local), nodes, ranks.index(layout.rank), tuple(ranks), layout.world_size)


def shutdown() -> None:
    """Release the communication runtime (msrun workers)."""
    monitor = liveness.active()
    if monitor is not None:
        monitor.leave("done")
    if "world" in _created:
        comm.release()
        _created.clear()
