"""The router's MindSpore shell: its parameters and constants under the checkpoint names (as in the torch
backend); the control flow is ``locmoe.moe.routing`` (mirroring the numpy reference)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from mindspore import Parameter, Tensor, nn

from locmoe.config.schema import MoEConfig
from locmoe.moe.records import RouterOutput
from locmoe.moe.router_tables import router_tables
from locmoe.moe.routing import route
from locmoe.moe.surface import MoEOps
from locmoe.parallel.topology import ExpertPlacement
from locmoe.routing.gating import grap_gate_matrix
from locmoe.routing.node_limited import check_node_limit, node_expert_table


class Router(nn.Cell):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, placement: ExpertPlacement, ops: MoEOps):
        super().__init__()
        E, t = moe.num_experts, router_tables(moe, vocab_size, placement)
        self.moe, self.ops = moe, ops
        gate = Tensor(np.zeros((d_model, E), np.float32))
        self.gate_weight = Parameter(gate, name="gate_weight") if t.learned_gate else None
        self.domain_groups, self.domain_member = Tensor(t.domain_groups), Tensor(t.domain_member)
        self.node_mask, self.single_node = Tensor(t.node_mask), t.single_node
        # the hash table is state of the hash router only (checkpointed there, as in the torch backend)
        table, is_state = Tensor(t.hash_table), moe.router.kind == "hash"
        self.hash_table = Parameter(table, name="hash_table", requires_grad=False) if is_state else table
        # The capacity bound's angle average (NaN until an expert is first routed to): stored here under its
        # checkpoint name, read and written by the layer's CapacityPlanner only.
        self.angle_ema = Parameter(Tensor(np.full(E, np.nan)), name="angle_ema", requires_grad=False)
        self._init_options(moe, d_model, placement, t.domain_groups)

    def _init_options(self, moe: MoEConfig, d_model: int, placement: ExpertPlacement, groups: np.ndarray) -> None:
        """The paper's gate (ReLU, learned ε), the loss-free selection bias (state, updated after each training
        call), node-limited top-k's node table, the paper bound's GrAP columns."""
        r, E = moe.router, moe.num_experts
        self.gate_bias = (
            Parameter(Tensor(np.zeros(E, np.float32)), name="gate_bias") if r.gate_bias and r.kind != "hash" else None
        )
        self.selection_bias = (
            Parameter(Tensor(np.zeros(E, np.float32)), name="selection_bias", requires_grad=False)
            if r.bias_update_rate > 0
            else None
        )
        self.node_table = node_expert_table(placement)  # [N, E/N] host constants
        self.node_of_expert = None  # (derived from it by the kernel)
        if r.node_limit:
            assert r.top_k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
            check_node_limit(self.node_table, groups, r.node_limit, r.top_k)
        paper = moe.capacity.mode == "bound" and moe.capacity.bound_rule == "paper"
        self.grap_columns = Tensor(grap_gate_matrix(d_model, E)) if paper and r.gate == "grap" else None

    def construct(
        self,
        x: Tensor,
        local: Tensor,
        blocks: int = 1,
        token_ids: Optional[Tensor] = None,
        domain: Optional[Tensor] = None,
    ) -> RouterOutput:
        """Route x [T, d]; ``local`` [T, E] the experts on each token's node (``locmoe.moe.routing.route``)."""
        return route(self.ops, self, x, local, blocks, token_ids, domain)
