"""Each expert's capacity for one layer call, and the angle average the bound rules keep.

``CapacityPlanner`` is the one owner of that average: the router shell stores it under its checkpoint name
(``router.angle_ema``) and nothing but the planner reads or writes it. Modes (``moe.capacity``): dropless
(nothing is dropped: k·T per expert), factor (⌈factor·k·T/E⌉), and bound, whose rules are ``quantile`` (the
cone that holds the ``angle_quantile`` of an expert's copies, its share of the group's tokens), ``cone``
(LocMoE's lower bound from the largest angle, sphere-cap areas) and ``paper`` (LocMoE Theorem 1 in the token
space). Mirrors ``locmoe.routing.capacity`` and ``locmoe.routing.paper_bound``.

NOTE: host syncs — none in the quantile and paper rules; the cone rule's sphere-cap areas are scipy's betainc
on the host (E numbers move).
"""

from __future__ import annotations

from typing import Optional

from locmoe.config.schema import MoEConfig
from locmoe.moe.records import Tensor
from locmoe.moe.surface import MoEOps
from locmoe.routing import capacity as cap


class CapacityPlanner:
    def __init__(self, ops: MoEOps, moe: MoEConfig, state_holder, gate_rows: int, model_dim: int):
        """``state_holder.angle_ema`` [E] float64 is the state (NaN until an expert is first routed to), looked
        up on every call: moving a module to a device replaces its buffers. ``gate_rows``: the dimension of the
        gate space the cone rule measures in (E for GrAP, else d); ``model_dim`` d, the token space of the
        paper rule."""
        self.ops, self.moe, self.state_holder = ops, moe, state_holder
        self.gate_rows, self.model_dim = gate_rows, model_dim
        self.drops = moe.router.kind != "expert_choice" and moe.capacity.mode != "dropless"

    def plan(
        self,
        copy_expert: Tensor,
        copy_angle: Tensor,
        token_angles: Optional[Tensor],
        num_tokens: int,
        group,
        training: bool,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """([E] capacities, the angular bound or None) for ``num_tokens`` tokens of the group whose copies go
        to ``copy_expert`` at ``copy_angle``; ``token_angles`` [T, E] this rank's (quantile rule)."""
        ops, c, E, k = self.ops, self.moe.capacity, self.moe.num_experts, self.moe.router.top_k
        assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
        like = copy_expert
        if not self.drops:
            return ops.full((E,), k * num_tokens, "int64", like=like), None
        factor = cap.factor_capacity(c.factor, k, num_tokens, E)
        if c.mode == "factor":
            return ops.full((E,), factor, "int64", like=like), None
        floor = cap.factor_capacity(c.min_factor, k, num_tokens, E) if c.min_factor > 0 else 1
        if c.bound_rule == "paper":
            return self._paper(copy_expert, copy_angle, num_tokens, floor, factor, training)
        if c.bound_rule == "quantile":
            average, inside = ops.quantile_cone_counts(
                copy_angle, copy_expert, E, self.angle_average, token_angles, c.angle_quantile, c.angle_momentum
            )
            self._keep(average, training)
            return ops.quantile_capacity(ops.all_reduce(inside, group), average, k, num_tokens, c.slack, floor, factor)
        # the cone rule: the largest angle per expert
        delta, seen = ops.expert_angles(copy_angle, copy_expert, E, 1.0)
        average = ops.update_angle_ema(self.angle_average, delta, seen, c.angle_momentum)
        self._keep(average, training)
        bound = cap.capacity_lower_bound(ops.to_host(average), self.gate_rows, k, num_tokens)  # a host sync
        capacity = ops.unseen_fallback(ops.full((E,), bound, "int64", like=like), average, factor)
        return ops.clamp_min(capacity, floor), bound

    def _paper(
        self, copy_expert: Tensor, deviation: Tensor, num_tokens: int, floor: int, factor: int, training: bool
    ) -> tuple[Tensor, Tensor]:
        """LocMoE Theorem 1 from δ, the largest token-space cosine distance of a routed copy (the reference's
        ``paper_rule``): fixed by ``paper_delta``, or measured, with its ``paper_schedule``."""
        ops, c, E, k = self.ops, self.moe.capacity, self.moe.num_experts, self.moe.router.top_k
        assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
        if c.paper_delta > 0:
            delta = ops.full((), c.paper_delta, "float64", like=copy_expert)
            bound = ops.paper_capacity(delta, self.model_dim, E, k, num_tokens, c.paper_form)
        else:
            measured, seen = ops.expert_angles(deviation, copy_expert, E, 1.0)
            state = ops.update_paper_delta(self.angle_average, measured, seen, c.paper_schedule, c.angle_momentum)
            self._keep(state, training)
            bound = ops.paper_capacity(ops.nanmax(state), self.model_dim, E, k, num_tokens, c.paper_form)
            # before any measurement the factor capacity stands in
            bound = ops.where(ops.all_nan(state), ops.full_like(bound, factor), bound)
        return ops.expand(ops.clamp_min(bound, floor), E), bound

    @property
    def angle_average(self) -> Tensor:
        return self.state_holder.angle_ema

    def _keep(self, average: Tensor, training: bool) -> None:
        """Training keeps the updated average; evaluation leaves it as it was."""
        if training:
            self.ops.assign_(self.angle_average, average)
