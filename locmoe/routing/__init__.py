"""The numpy routing reference (DESIGN §2, §5): every backend's routing decisions are tested against it."""
from locmoe.routing.admission import admit, admission_order
from locmoe.routing.baselines import expert_choice, hash_route, hash_table
from locmoe.routing.capacity import (cap_fraction, capacity_lower_bound, cone_shares, empirical_cone_shares,
                                     expert_angles, factor_capacity, gate_angles, per_expert_bound, update_angle_ema)
from locmoe.routing.dispatch_plan import DispatchPlan, build_dispatch_plan, chunk_permutation
from locmoe.routing.domains import allowed_experts, domain_expert_groups
from locmoe.routing.gating import (dense_gate_scores, grap_gate_matrix, grap_scores, log_softmax, masked_logits,
                                   softmax)
from locmoe.routing.losses import load_balance_loss, locality_loss
from locmoe.routing.router import RouterState, RoutingResult, local_expert_mask, route
from locmoe.routing.selection import intra_node_first
from locmoe.routing.topk import combine_weights, sort_choices, top_k
