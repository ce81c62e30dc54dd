"""The router's torch shell: its parameters and constants under the checkpoint names; the control flow is
``locmoe.moe.routing`` (mirroring the numpy reference ``locmoe.routing.router.route``)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from backends.torch import routing_extras as extras
from locmoe.config.schema import MoEConfig
from locmoe.moe.records import RouterOutput
from locmoe.moe.routing import route
from locmoe.moe.surface import MoEOps
from locmoe.routing.baselines import hash_table
from locmoe.routing.domains import domain_expert_groups
from locmoe.topology import ExpertPlacement


class Router(nn.Module):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, placement: ExpertPlacement, ops: MoEOps):
        super().__init__()
        r, E = moe.router, moe.num_experts
        self.moe, self.ops = moe, ops
        # the hash router has no gate at all; GrAP's gate is fixed, so only a learned gate is a parameter
        learned = r.gate == "dense" and r.kind != "hash"
        self.gate_weight = nn.Parameter(torch.zeros(d_model, E)) if learned else None
        groups = domain_expert_groups(moe.domains.num_domains, E, moe.domains.seed)
        member = np.zeros((len(groups), E), dtype=bool)
        member[np.arange(len(groups))[:, None], groups] = True
        self.register_buffer("domain_groups", torch.from_numpy(groups), persistent=False)  # [D, E/D]
        self.register_buffer("domain_member", torch.from_numpy(member), persistent=False)  # [D, E]
        self.register_buffer("node_mask", torch.from_numpy(placement.node_mask()), persistent=False)  # [N, E]
        # on a single node every expert is local and the intra-node-first rule cannot change a choice
        self.single_node = placement.topology.num_nodes == 1
        table = hash_table(vocab_size, E // moe.domains.num_domains, r.hash_seed)
        self.register_buffer("hash_table", torch.from_numpy(table), persistent=r.kind == "hash")
        # The capacity bound's angle average (NaN until an expert is first routed to): stored here under its
        # checkpoint name, read and written by the layer's CapacityPlanner only.
        self.register_buffer("angle_ema", torch.full((E,), float("nan"), dtype=torch.float64))
        extras.init_options(self, moe, d_model, placement, groups)  # ε, selection bias, node table

    def forward(
        self,
        x: torch.Tensor,
        local: torch.Tensor,
        blocks: int = 1,
        token_ids: Optional[torch.Tensor] = None,
        domain: Optional[torch.Tensor] = None,
    ) -> RouterOutput:
        """Route x [T, d]; ``local`` [T, E] the experts on each token's node (``locmoe.moe.routing.route``)."""
        return route(self.ops, self, x, local, blocks, token_ids, domain)
