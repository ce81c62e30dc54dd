"""The MoE layer's parts, built once from the config and an op surface, for every shell that runs the layer
(torch's and MindSpore's ``MoELayer``, torch serving's ``InferenceMoE``).

The shell supplies its framework's module classes (router, experts) and keeps the parameters: it assigns
``router`` and then ``experts`` to itself, so the parameter names (``router.*``, ``experts.*``) are the same
everywhere. The capacity planner, the dispatcher and the traffic counter are plain objects of ``locmoe.moe``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from locmoe.config.schema import MoEConfig
from locmoe.moe.capacity import CapacityPlanner
from locmoe.moe.dispatcher import TokenDispatcher
from locmoe.moe.surface import MoEOps
from locmoe.parallel.context import ExpertParallel
from locmoe.parallel.traffic import TrafficCounter


@dataclass
class MoEParts:
    router: Any  # the backend's Router shell: gate parameters, routing constants, the angle average
    experts: Any  # the backend's GroupedExperts: this rank's experts' weights
    capacity: CapacityPlanner
    dispatcher: TokenDispatcher  # plan, permute, all-to-all (flat / hierarchical / static), combine
    traffic: TrafficCounter  # bytes the dispatcher's all-to-alls move, per layer call


def build_moe_parts(
    moe: MoEConfig,
    ops: MoEOps,
    ep: ExpertParallel,
    d_model: int,
    vocab_size: int,
    router_cls: Callable[..., Any],
    experts_cls: Callable[..., Any],
    expert_impl: Optional[str] = None,
) -> MoEParts:
    """The parts of one MoE layer. ``router_cls(moe, d_model, vocab_size, placement, ops)`` and
    ``experts_cls(num_local, d_model, d_expert, activation, impl)`` are the backend's shells;
    ``expert_impl`` replaces ``moe.expert_impl`` (serving chooses its kernel per call and builds "auto")."""
    router = router_cls(moe, d_model, vocab_size, ep.placement, ops)
    impl = moe.expert_impl if expert_impl is None else expert_impl
    experts = experts_cls(len(ep.local_experts), d_model, moe.d_expert, moe.activation, impl)
    # the cone rule measures angles in the gate's space: E rows for GrAP, else the token space
    gate_rows = moe.num_experts if moe.router.gate == "grap" else d_model
    capacity = CapacityPlanner(ops, moe, router, gate_rows, d_model)
    traffic = TrafficCounter()
    return MoEParts(router, experts, capacity, TokenDispatcher(ops, ep, moe, capacity, traffic), traffic)
