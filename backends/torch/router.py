"""The router's torch shell: its parameters and constants under the checkpoint names; the control flow is
``locmoe.moe.routing`` (mirroring the numpy reference ``locmoe.routing.router.route``)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from backends.torch import routing_extras as extras
from locmoe.config.schema import MoEConfig
from locmoe.moe.records import RouterOutput
from locmoe.moe.router_tables import router_tables
from locmoe.moe.routing import route
from locmoe.moe.surface import MoEOps
from locmoe.parallel.topology import ExpertPlacement


class Router(nn.Module):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, placement: ExpertPlacement, ops: MoEOps):
        super().__init__()
        E, t = moe.num_experts, router_tables(moe, vocab_size, placement)
        self.moe, self.ops = moe, ops
        self.gate_weight = nn.Parameter(torch.zeros(d_model, E)) if t.learned_gate else None
        for name in ("domain_groups", "domain_member", "node_mask"):
            self.register_buffer(name, torch.from_numpy(getattr(t, name)), persistent=False)
        self.single_node = t.single_node
        self.register_buffer("hash_table", torch.from_numpy(t.hash_table), persistent=moe.router.kind == "hash")
        # The capacity bound's angle average (NaN until an expert is first routed to): stored here under its
        # checkpoint name, read and written by the layer's CapacityPlanner only.
        self.register_buffer("angle_ema", torch.full((E,), float("nan"), dtype=torch.float64))
        extras.init_options(self, moe, d_model, placement, t.domain_groups)  # ε, selection bias, node table

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
