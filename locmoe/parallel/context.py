"""What a rank knows about its place in the job, independent of the framework: the layout, its device, and
its process groups (each backend's own ``Group`` type), and what an MoE layer needs of expert parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from locmoe.parallel.topology import ExpertPlacement, ParallelLayout, Topology


@dataclass(kw_only=True)
class DistContext:
    layout: ParallelLayout
    device: Any  # torch.device, or the MindSpore device target ("CPU", "Ascend", "GPU")
    ep: Any  # the expert-parallel group
    intra: Any  # this rank's node inside the EP group
    inter: Any  # ranks of equal local index across the EP group's nodes
    expert_dp: Any  # ranks holding the same experts (their gradients are averaged)
    world: Any
    emulated: bool  # one process stands in for the whole EP group

    @classmethod
    def one_process(cls, layout: ParallelLayout, device, single) -> "DistContext":
        """A process without peers: every group is ``single``, the backend's group of one."""
        return cls(
            layout=layout,
            device=device,
            ep=single,
            intra=single,
            inter=single,
            expert_dp=single,
            world=single,
            emulated=layout.emulated,
        )

    @property
    def rank(self) -> int:
        return self.layout.rank

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def is_main(self) -> bool:
        return self.layout.rank == 0


@dataclass(frozen=True, kw_only=True)
class ExpertParallel:
    """What an MoE layer needs to know about expert parallelism."""

    topology: Topology  # the EP group's nodes x devices (emulated in one process, or real)
    placement: ExpertPlacement
    rank: int  # this process's rank in the EP group (0 when one process stands in for all)
    group: Any  # the EP process group (the backend's Group; a group of one without EP)
    intra: Any  # this rank's node inside the EP group
    inter: Any  # ranks of equal local index across the EP group's nodes
    scheme: str  # "hierarchical" or "flat"

    @property
    def distributed(self) -> bool:
        """The experts are spread over several processes (else one process holds them all)."""
        return self.group.size > 1

    @property
    def stands_for(self) -> tuple:
        """The EP ranks whose tokens this process holds: its own, or all of them when it emulates the group."""
        return (self.rank,) if self.distributed else tuple(range(self.topology.world_size))

    @property
    def local_experts(self) -> tuple:
        if self.distributed:
            return self.placement.local_experts(self.rank)
        return tuple(range(self.placement.num_experts))


def expert_parallel(ctx: DistContext, parallel, num_experts: int) -> ExpertParallel:
    """The EP view of a layer with ``num_experts`` experts placed by ``parallel.placement``."""
    placement = ExpertPlacement.from_config(parallel, num_experts, ctx.layout.topology)
    return ExpertParallel(
        topology=ctx.layout.topology,
        placement=placement,
        rank=ctx.layout.ep_rank,
        group=ctx.ep,
        intra=ctx.intra,
        inter=ctx.inter,
        scheme=parallel.dispatch,
    )
