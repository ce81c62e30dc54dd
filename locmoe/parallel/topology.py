"""Cluster topology of one expert-parallel group: ranks -> nodes, process-group rank lists, expert placement.

Ranks are numbered node-major: rank = node * G + local index, G = devices per node. The expert-parallel
(EP) group is a contiguous block of ranks; with EP size < world size, the ranks with the same position in
their EP groups hold the same experts and average their gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from locmoe.config.errors import ConfigError


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher (torchrun, msrun, or none) says about this process."""

    world_size: int
    rank: int
    local_world_size: int
    launcher: str  # "torchrun", "msrun" or "none"

    @staticmethod
    def from_environ(environ: Mapping[str, str] = os.environ) -> "LaunchEnv":
        """torchrun sets WORLD_SIZE/RANK/LOCAL_WORLD_SIZE; msrun sets MS_WORKER_NUM/RANK_ID and our
        scripts/train_msrun.sh adds MS_LOCAL_WORKER_NUM (without it one node is assumed)."""
        if "WORLD_SIZE" in environ:
            world = int(environ["WORLD_SIZE"])
            return LaunchEnv(
                world, int(environ.get("RANK", 0)), int(environ.get("LOCAL_WORLD_SIZE", world)), "torchrun"
            )
        if "MS_WORKER_NUM" in environ:
            world = int(environ["MS_WORKER_NUM"])
            return LaunchEnv(
                world, int(environ.get("RANK_ID", 0)), int(environ.get("MS_LOCAL_WORKER_NUM", world)), "msrun"
            )
        return LaunchEnv(1, 0, 1, "none")


@dataclass(frozen=True)
class Topology:
    """``num_nodes`` nodes of ``devices_per_node`` ranks each (an EP group, or one emulated on fewer hosts)."""

    num_nodes: int
    devices_per_node: int

    def __post_init__(self):
        if self.num_nodes < 1 or self.devices_per_node < 1:
            raise ConfigError(
                "parallel.nodes",
                f"topology {self.num_nodes} x {self.devices_per_node}: both "
                "the node count and the devices per node must be >= 1",
            )

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node

    def node_of(self, rank: int | np.ndarray) -> int | np.ndarray:
        return rank // self.devices_per_node

    def local_index(self, rank: int | np.ndarray) -> int | np.ndarray:
        return rank % self.devices_per_node

    def rank_of(self, node: int, local_index: int) -> int:
        return node * self.devices_per_node + local_index

    def intra_node_groups(self) -> list[list[int]]:
        """One rank list per node: the ranks that talk over the fast link (stage 1 of the dispatch)."""
        G = self.devices_per_node
        return [[n * G + g for g in range(G)] for n in range(self.num_nodes)]

    def inter_node_groups(self) -> list[list[int]]:
        """One rank list per local index: the ranks that carry cross-node traffic (stage 2)."""
        G = self.devices_per_node
        return [[n * G + g for n in range(self.num_nodes)] for g in range(G)]

    def locality_class(self, src_rank: np.ndarray, dst_rank: np.ndarray) -> np.ndarray:
        """0 = same rank, 1 = same node, 2 = crosses nodes (the admission priority order)."""
        same_node = self.node_of(src_rank) == self.node_of(dst_rank)
        return np.where(src_rank == dst_rank, 0, np.where(same_node, 1, 2)).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class ParallelLayout:
    """Where this process sits: its EP group's topology and its position inside that group."""

    topology: Topology  # of one EP group
    world_size: int
    rank: int  # global rank
    ep_rank: int  # rank inside the EP group
    ep_group_ranks: tuple  # global ranks of this process's EP group
    expert_dp_ranks: tuple  # global ranks holding the same experts as this one (gradient averaging)
    emulated: bool = False  # one process stands in for the whole EP group (holds every expert)


def layout_from_config(parallel, env: LaunchEnv) -> ParallelLayout:
    """Combine the launcher's view with the config's ``nodes x devices_per_node`` and EP-size overrides.

    A single process with a multi-rank topology in the config emulates that EP group (``emulated``).
    """
    world, local = env.world_size, env.local_world_size
    if world == 1 and parallel.nodes * parallel.devices_per_node > 1:
        if parallel.expert_parallel_size not in (0, parallel.nodes * parallel.devices_per_node):
            raise ConfigError(
                "parallel.expert_parallel_size",
                f"{parallel.expert_parallel_size}: one process "
                f"emulates the whole {parallel.nodes} x {parallel.devices_per_node} group; set it to 0",
            )
        topo = Topology(parallel.nodes, parallel.devices_per_node)
        return ParallelLayout(
            topology=topo, world_size=1, rank=0, ep_rank=0, ep_group_ranks=(0,), expert_dp_ranks=(0,), emulated=True
        )
    if parallel.nodes:
        if parallel.nodes * parallel.devices_per_node != world:
            raise ConfigError(
                "parallel.nodes",
                f"{parallel.nodes} nodes x {parallel.devices_per_node} devices "
                f"= {parallel.nodes * parallel.devices_per_node} ranks, but the launcher started "
                f"{world} ({env.launcher}); make them equal or set both to 0",
            )
        G = parallel.devices_per_node
    else:
        if world % local:
            raise ConfigError(
                "parallel.devices_per_node",
                f"the launcher reports {world} ranks with {local} "
                "per node, which does not divide; set parallel.nodes and devices_per_node",
            )
        G = local
    ep = parallel.expert_parallel_size or world
    if world % ep:
        raise ConfigError("parallel.expert_parallel_size", f"{ep} must divide the world size ({world})")
    if ep % G and G % ep:
        raise ConfigError(
            "parallel.expert_parallel_size",
            f"{ep} must be a multiple or a divisor of the devices per node ({G}) so that EP groups align with nodes",
        )
    topo = Topology(max(1, ep // G), min(G, ep))
    start = env.rank // ep * ep
    return ParallelLayout(
        topology=topo,
        world_size=world,
        rank=env.rank,
        ep_rank=env.rank - start,
        ep_group_ranks=tuple(range(start, start + ep)),
        expert_dp_ranks=tuple(range(env.rank % ep, world, ep)),
    )


@dataclass(frozen=True)
class ExpertPlacement:
    """Which rank of the EP group holds each expert; every rank holds E / W experts."""

    expert_to_rank: tuple
    topology: Topology

    def __post_init__(self):
        E, W = len(self.expert_to_rank), self.topology.world_size
        if E % W:
            raise ConfigError(
                "moe.num_experts",
                f"{E} is not divisible by the expert-parallel size ({W}), set by parallel.expert_parallel_size "
                "or parallel.nodes x parallel.devices_per_node",
            )
        if not all(0 <= r < W for r in self.expert_to_rank):  # before bincount, which refuses negative ranks
            raise ConfigError("parallel.placement_table", f"{list(self.expert_to_rank)} names ranks outside [0, {W})")
        counts = np.bincount(np.asarray(self.expert_to_rank, dtype=np.int64), minlength=W)
        if (counts != E // W).any():
            raise ConfigError(
                "parallel.placement_table",
                f"{list(self.expert_to_rank)} gives ranks "
                f"{counts.tolist()} experts; each of the {W} ranks must hold {E // W}",
            )

    @staticmethod
    def contiguous(num_experts: int, topology: Topology) -> "ExpertPlacement":
        per = max(1, num_experts // topology.world_size)
        return ExpertPlacement(tuple(e // per for e in range(num_experts)), topology)

    @staticmethod
    def round_robin(num_experts: int, topology: Topology) -> "ExpertPlacement":
        return ExpertPlacement(tuple(e % topology.world_size for e in range(num_experts)), topology)

    @staticmethod
    def explicit(table: Sequence[int], topology: Topology) -> "ExpertPlacement":
        return ExpertPlacement(tuple(int(r) for r in table), topology)

    @staticmethod
    def from_config(parallel, num_experts: int, topology: Topology) -> "ExpertPlacement":
        if parallel.placement == "explicit":
            return ExpertPlacement.explicit(parallel.placement_table, topology)
        return getattr(ExpertPlacement, parallel.placement)(num_experts, topology)

    @property
    def num_experts(self) -> int:
        return len(self.expert_to_rank)

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.topology.world_size

    @property
    def rank_array(self) -> np.ndarray:
        """[E] rank of each expert."""
        return np.asarray(self.expert_to_rank, dtype=np.int64)

    def local_experts(self, rank: int) -> tuple:
        """Experts on ``rank``, ascending: slot i of the rank's weight tensor holds expert i of this list."""
        return tuple(e for e, r in enumerate(self.expert_to_rank) if r == rank)

    def local_slot(self) -> np.ndarray:
        """[E] each expert's slot on its rank."""
        slot = np.zeros(self.num_experts, dtype=np.int64)
        for r in range(self.topology.world_size):
            slot[list(self.local_experts(r))] = np.arange(self.experts_per_rank)
        return slot

    def node_experts(self, node: int) -> tuple:
        return tuple(e for e, r in enumerate(self.expert_to_rank) if self.topology.node_of(r) == node)

    def node_mask(self) -> np.ndarray:
        """[N, E] True where expert e lives on node n."""
        nodes = np.asarray(self.topology.node_of(self.rank_array))  # [E]
        return nodes[None, :] == np.arange(self.topology.num_nodes)[:, None]
