"""The numpy routing reference (the method: docs/method.md): every backend's routing decisions are tested
against it."""

from locmoe.routing.admission import admission_order, admit
from locmoe.routing.balancing import selection_scores, update_selection_bias
from locmoe.routing.baselines import expert_choice, hash_route, hash_table
from locmoe.routing.capacity import (
    cap_fraction,
    capacity_lower_bound,
    cone_shares,
    empirical_cone_shares,
    expert_angles,
    factor_capacity,
    gate_angles,
    per_expert_bound,
    unseen_fallback,
    update_angle_ema,
)
from locmoe.routing.dispatch_plan import DispatchPlan, build_dispatch_plan, chunk_permutation
from locmoe.routing.domains import allowed_experts, domain_expert_groups
from locmoe.routing.forced import forced_experts, rank_positions
from locmoe.routing.gating import (
    dense_gate_scores,
    grap_gate_matrix,
    grap_scores,
    log_softmax,
    masked_logits,
    paper_gate,
    sigmoid,
    softmax,
)
from locmoe.routing.losses import (
    batch_locality_loss,
    kl_divergence,
    load_balance_loss,
    localised_distribution,
    locality_loss,
    router_z_loss,
)
from locmoe.routing.node_limited import check_node_limit, node_expert_table, node_limited_top_k, node_scores
from locmoe.routing.paper_bound import (
    belong_probability,
    cosine_deviation,
    min_capacity_fraction,
    paper_capacity,
    update_paper_delta,
)
from locmoe.routing.router import RouterState, RoutingResult, affinities, local_expert_mask, route
from locmoe.routing.selection import intra_node_first
from locmoe.routing.topk import combine_weights, sort_choices, top_k

__all__ = [
    "DispatchPlan",
    "RouterState",
    "RoutingResult",
    "admission_order",
    "admit",
    "affinities",
    "allowed_experts",
    "batch_locality_loss",
    "belong_probability",
    "build_dispatch_plan",
    "cap_fraction",
    "capacity_lower_bound",
    "check_node_limit",
    "chunk_permutation",
    "combine_weights",
    "cone_shares",
    "cosine_deviation",
    "dense_gate_scores",
    "domain_expert_groups",
    "empirical_cone_shares",
    "expert_angles",
    "expert_choice",
    "factor_capacity",
    "forced_experts",
    "gate_angles",
    "grap_gate_matrix",
    "grap_scores",
    "hash_route",
    "hash_table",
    "intra_node_first",
    "kl_divergence",
    "load_balance_loss",
    "local_expert_mask",
    "localised_distribution",
    "locality_loss",
    "log_softmax",
    "masked_logits",
    "min_capacity_fraction",
    "node_expert_table",
    "node_limited_top_k",
    "node_scores",
    "paper_capacity",
    "paper_gate",
    "per_expert_bound",
    "rank_positions",
    "route",
    "router_z_loss",
    "selection_scores",
    "sigmoid",
    "softmax",
    "sort_choices",
    "top_k",
    "unseen_fallback",
    "update_angle_ema",
    "update_paper_delta",
    "update_selection_bias",
]
