"""Topology: launcher environments, process-group rank lists, EP layout and expert placement."""

import numpy as np
import pytest

from locmoe.config import ConfigError, ParallelConfig
from locmoe.parallel.topology import ExpertPlacement, LaunchEnv, Topology, layout_from_config


def test_launch_env_from_torchrun_msrun_and_none():
    assert LaunchEnv.from_environ({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_WORLD_SIZE": "4"}) == LaunchEnv(
        8, 5, 4, "torchrun"
    )
    assert LaunchEnv.from_environ({"MS_WORKER_NUM": "4", "RANK_ID": "3", "MS_LOCAL_WORKER_NUM": "2"}) == LaunchEnv(
        4, 3, 2, "msrun"
    )
    assert LaunchEnv.from_environ({"MS_WORKER_NUM": "4", "RANK_ID": "1"}) == LaunchEnv(4, 1, 4, "msrun")
    assert LaunchEnv.from_environ({}) == LaunchEnv(1, 0, 1, "none")


def test_groups_of_two_nodes_of_two():
    t = Topology(2, 2)
    assert t.world_size == 4
    assert t.intra_node_groups() == [[0, 1], [2, 3]]
    assert t.inter_node_groups() == [[0, 2], [1, 3]]
    assert [t.node_of(r) for r in range(4)] == [0, 0, 1, 1]
    assert [t.local_index(r) for r in range(4)] == [0, 1, 0, 1]
    assert t.rank_of(1, 1) == 3
    np.testing.assert_array_equal(t.locality_class(np.array([0, 0, 0, 3]), np.array([0, 1, 2, 2])), [0, 1, 2, 1])


def test_bad_topology():
    with pytest.raises(ConfigError, match="both the node count and the devices per node must be >= 1"):
        Topology(0, 2)


def test_layout_emulates_nodes_and_splits_ep_groups():
    env = LaunchEnv(8, 6, 8, "torchrun")
    lay = layout_from_config(ParallelConfig(nodes=2, devices_per_node=4, expert_parallel_size=4), env)
    assert lay.topology == Topology(1, 4)
    assert lay.ep_rank == 2 and lay.ep_group_ranks == (4, 5, 6, 7) and lay.expert_dp_ranks == (2, 6)
    lay = layout_from_config(ParallelConfig(nodes=2, devices_per_node=4), env)
    assert lay.topology == Topology(2, 4) and lay.ep_rank == 6 and lay.expert_dp_ranks == (6,)
    lay = layout_from_config(ParallelConfig(), LaunchEnv(4, 1, 2, "torchrun"))
    assert lay.topology == Topology(2, 2)


def test_layout_errors_name_the_mismatch():
    with pytest.raises(ConfigError, match=r"2 nodes x 2 devices = 4 ranks, but the launcher started 8 \(torchrun\)"):
        layout_from_config(ParallelConfig(nodes=2, devices_per_node=2), LaunchEnv(8, 0, 8, "torchrun"))
    with pytest.raises(ConfigError, match="expert_parallel_size: 3 must divide the world size"):
        layout_from_config(ParallelConfig(expert_parallel_size=3), LaunchEnv(8, 0, 8, "torchrun"))
    with pytest.raises(ConfigError, match="must be a multiple or a divisor of the devices per node"):
        layout_from_config(
            ParallelConfig(nodes=3, devices_per_node=4, expert_parallel_size=6), LaunchEnv(12, 0, 4, "torchrun")
        )


def test_placements():
    t = Topology(2, 2)
    c = ExpertPlacement.contiguous(8, t)
    assert c.expert_to_rank == (0, 0, 1, 1, 2, 2, 3, 3)
    assert c.local_experts(2) == (4, 5) and c.node_experts(1) == (4, 5, 6, 7)
    np.testing.assert_array_equal(c.local_slot(), [0, 1, 0, 1, 0, 1, 0, 1])
    r = ExpertPlacement.round_robin(8, t)
    assert r.expert_to_rank == (0, 1, 2, 3, 0, 1, 2, 3) and r.local_experts(1) == (1, 5)
    np.testing.assert_array_equal(r.node_mask(), [[1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1]])
    x = ExpertPlacement.explicit([3, 2, 1, 0], t)
    assert x.local_experts(0) == (3,) and x.experts_per_rank == 1


def test_placement_errors():
    t = Topology(2, 2)
    with pytest.raises(ConfigError, match=r"moe.num_experts: 6 is not divisible by the expert-parallel size \(4\)"):
        ExpertPlacement.contiguous(6, t)
    with pytest.raises(ConfigError, match=r"gives ranks \[2, 0, 1, 1\] experts; each of the 4 ranks must hold 1"):
        ExpertPlacement.explicit([0, 0, 2, 3], t)
    with pytest.raises(ConfigError, match=r"names ranks outside \[0, 4\)"):
        ExpertPlacement.explicit([0, 1, 2, 7], t)
