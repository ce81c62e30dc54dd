"""The router's constants, from the config, computed once for both backends' ``Router`` shells (numpy): each
shell turns them into its tensors under the checkpoint names (``domain_groups``, ``domain_member``,
``node_mask``, ``hash_table``) and learns a gate only where ``learned_gate``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from locmoe.config.schema import MoEConfig
from locmoe.parallel.topology import ExpertPlacement
from locmoe.routing.baselines import hash_table
from locmoe.routing.domains import domain_expert_groups


@dataclass(frozen=True)
class RouterTables:
    learned_gate: bool  # the hash router has no gate at all; GrAP's gate is fixed
    domain_groups: np.ndarray  # [D, E/D] the experts of each domain's group
    domain_member: np.ndarray  # [D, E] bool, the same as a mask
    node_mask: np.ndarray  # [N, E] bool, the experts on each node
    single_node: bool  # every expert is local: the intra-node-first rule cannot change a choice
    hash_table: np.ndarray  # [V] each token id's slot in its domain's group (state of the hash router only)


def router_tables(moe: MoEConfig, vocab_size: int, placement: ExpertPlacement) -> RouterTables:
    r, E = moe.router, moe.num_experts
    groups = domain_expert_groups(moe.domains.num_domains, E, moe.domains.seed)
    member = np.zeros((len(groups), E), dtype=bool)
    member[np.arange(len(groups))[:, None], groups] = True
    return RouterTables(
        learned_gate=r.gate == "dense" and r.kind != "hash",
        domain_groups=groups,
        domain_member=member,
        node_mask=placement.node_mask(),
        single_node=placement.topology.num_nodes == 1,
        hash_table=hash_table(vocab_size, E // moe.domains.num_domains, r.hash_seed),
    )
