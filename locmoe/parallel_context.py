"""What a rank knows about its place in the job, independent of the framework: the layout, its device, and
its process groups (each backend's own ``Group`` type), and what an MoE layer needs of expert parallelism.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from locmoe.topology import ExpertPlacement, ParallelLayout, Topology


@dataclass
class DistContext:
    layout: ParallelLayout
    device: Any           # torch.device, or the MindSpore device target ("CPU", "Ascend", "GPU")
    ep: Any               # the expert-parallel group
    intra: Any            # this rank's node inside the EP group
    inter: Any            # ranks of equal local index across the EP group's nodes
    expert_dp: Any        # ranks holding the same experts (their gradients are averaged)
    world: Any
    emulated: bool        # one process stands in for the whole EP group

    @property
    def rank(self) -> int:
        return self.layout.rank

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    @property
    def is_main(self) -> bool:
        return self.layout.rank == 0


@dataclass(frozen=True)
class ExpertParallel:
    """What an MoE layer needs to know about expert parallelism."""
    topology: Topology
    placement: ExpertPlacement
    ep_rank: int
    emulated: bool
    ep: Any
    intra: Any
    inter: Any
    scheme: str               # "hierarchical" or "flat"

    @property
    def distributed(self) -> bool:
        return self.ep.size > 1

    @property
    def local_experts(self) -> tuple:
        if self.distributed:
            return self.placement.local_experts(self.ep_rank)
        return tuple(range(self.placement.num_experts))
