"""The router: gate scores → probabilities → each token's expert choices, plus the auxiliary losses.

Mirrors ``locmoe.routing.router.route`` (the numpy reference); the capacity and the admission of copies
happen in the dispatcher, which sees the whole expert-parallel group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from backends.torch import routing_extras as extras
from backends.torch import routing_ops as ops
from locmoe.config.schema import MoEConfig
from locmoe.routing.baselines import hash_table
from locmoe.routing.capacity import factor_capacity
from locmoe.routing.domains import domain_expert_groups
from locmoe.topology import ExpertPlacement


@dataclass
class RouterOutput:
    """Routing of this rank's T tokens into C copies (token, expert) with their combine weights.

    For expert choice the copies come from the whole group's probabilities (``gather``), and ``token`` still
    indexes this rank's tokens.
    """
    token: torch.Tensor          # [C] local token index
    expert: torch.Tensor         # [C]
    weight: torch.Tensor         # [C] combine weight (differentiable)
    prob: torch.Tensor           # [C] routing probability (admission priority, detached)
    aux_loss: torch.Tensor       # scalar, load balance (mean over source ranks)
    locality_loss: torch.Tensor  # scalar
    angles: Optional[torch.Tensor]   # [T, E] float64 gate-space angles (capacity mode bound), else None
    choices: Optional[torch.Tensor]  # [T, k] token-choice routers' experts, else None
    z_loss: Optional[torch.Tensor] = None  # scalar router z-loss (moe.router.z_loss_coef > 0), else None


class Router(nn.Module):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, placement: ExpertPlacement):
        super().__init__()
        r = moe.router
        self.kind, self.gate, self.k = r.kind, r.gate, r.top_k
        self.num_experts, self.temperature, self.rho = moe.num_experts, r.temperature, r.rho
        self.capacity_cfg, self.num_domains = moe.capacity, moe.domains.num_domains
        # the hash router has no gate at all; GrAP's gate is fixed, so only a learned gate is a parameter
        learned = r.gate == "dense" and r.kind != "hash"
        self.gate_weight = nn.Parameter(torch.zeros(d_model, moe.num_experts)) if learned else None
        groups = domain_expert_groups(moe.domains.num_domains, moe.num_experts, moe.domains.seed)
        self.register_buffer("domain_groups", torch.from_numpy(groups), persistent=False)
        self.register_buffer("node_mask", torch.from_numpy(placement.node_mask()), persistent=False)
        # on a single node every expert is local and the intra-node-first rule cannot change a choice
        self.single_node = placement.topology.num_nodes == 1
        self.devices_per_node = placement.topology.devices_per_node
        table = hash_table(vocab_size, moe.num_experts // moe.domains.num_domains, r.hash_seed)
        self.register_buffer("hash_table", torch.from_numpy(table), persistent=r.kind == "hash")
        # Moving average of the experts' cone angles (capacity bound); NaN until the first step.
        self.register_buffer("angle_ema", torch.full((moe.num_experts,), float("nan"), dtype=torch.float64))
        extras.init_options(self, moe, d_model, placement, groups)      # ε, selection bias, node table

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """[T, E] gate scores."""
        return ops.grap_scores(x, self.num_experts) if self.gate == "grap" else x @ self.gate_weight

    def forward(self, x: torch.Tensor, token_rank: torch.Tensor, num_source_ranks: int,
                token_ids: Optional[torch.Tensor] = None, domain: Optional[torch.Tensor] = None,
                gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, ep_rank: int = 0) -> RouterOutput:
        """Route x [T, d].

        Args:
            token_rank: [T] each token's EP rank (all equal on a real rank; W blocks when one process emulates
                W ranks). The losses are averaged over ``num_source_ranks`` equal blocks of tokens.
            gather: concatenates a tensor over the EP group (identity in one process); ``ep_rank`` is this
                rank's block in the result. Only expert choice needs them.
        """
        T, E = x.shape[0], self.num_experts
        domain = torch.zeros(T, dtype=torch.long, device=x.device) if domain is None else domain
        allowed = self._allowed(domain) if self.num_domains > 1 else None
        local = self.node_mask[token_rank // self.devices_per_node]
        local = local if allowed is None else local & allowed
        zero = x.new_zeros(())
        if self.kind == "hash":
            expert = self.domain_groups[domain, self.hash_table[token_ids] % self.domain_groups.shape[1]]
            ones = x.new_ones(T)
            return RouterOutput(torch.arange(T, device=x.device), expert, ones, ones, zero, zero, None,
                                expert[:, None])
        scores = self.scores(x)
        logits = extras.paper_gate(scores, self.router_cfg.gate_activation, self.gate_bias) / self.temperature
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        affinity, probs, log_probs = extras.affinities(self.router_cfg.scoring, logits)
        angles = self._angles(x, scores) if self.capacity_cfg.mode == "bound" else None
        if self.kind == "expert_choice":
            return self._expert_choice(probs, T, gather, ep_rank, angles, zero)
        p = affinity.detach()
        if self.kind == "locmoe" and not self.single_node:
            idx = ops.intra_node_first(p, self.k, local, self.rho)
        else:
            idx = extras.choose(self, p, allowed)                   # top-k, with loss-free bias / node limit
        chosen = affinity.gather(1, idx)                                           # [T, k]
        token = torch.arange(T, device=x.device).repeat_interleave(self.k)
        counted = ops.top_k(p, self.k) if self.router_cfg.balance_counts == "gate" else idx
        aux = _mean_over_ranks(probs, counted, E, num_source_ranks)
        loc = ops.locality_loss(log_probs, local) if self.router_cfg.locality_loss == "token" else \
            extras.batch_locality_loss(probs, local, allowed, num_source_ranks, self.router_cfg.locality_smoothing)
        z = extras.router_z_loss(logits) if self.router_cfg.z_loss_coef else None
        return RouterOutput(token, idx.reshape(-1), ops.combine_weights(chosen).reshape(-1),
                            chosen.detach().reshape(-1), aux, loc, angles, idx, z)

    def _allowed(self, domain: torch.Tensor) -> torch.Tensor:
        member = torch.zeros(self.domain_groups.shape[0], self.num_experts, dtype=torch.bool,
                             device=domain.device)
        member.scatter_(1, self.domain_groups, True)
        return member[domain]

    def _angles(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # float64 so that the bound's comparisons agree with the numpy reference
        if self.capacity_cfg.bound_rule == "paper":          # token-space cosine distances (LocMoE Theorem 1)
            return extras.cosine_deviation(x, self.grap_columns if self.gate == "grap" else self.gate_weight)
        with torch.no_grad():
            if self.gate == "grap":
                return ops.basis_angles(scores.double())
            return ops.gate_angles(x.double(), self.gate_weight.double())

    def _expert_choice(self, probs, T, gather, me, angles, zero) -> RouterOutput:
        all_probs = gather(probs.detach())                                         # [W*T, E]
        capacity = factor_capacity(self.capacity_cfg.factor, self.k, all_probs.shape[0], self.num_experts)
        token, expert = ops.expert_choice(all_probs, capacity)
        mine = (token >= me * T) & (token < (me + 1) * T)
        token, expert = token[mine] - me * T, expert[mine]
        weight = probs[token, expert]
        return RouterOutput(token, expert, weight, weight.detach(), zero, zero, angles, None)


def _mean_over_ranks(probs: torch.Tensor, idx: torch.Tensor, E: int, ranks: int) -> torch.Tensor:
    """Load-balance loss per source rank (equal blocks of tokens), averaged."""
    T = probs.shape[0]
    p = probs.view(ranks, T // ranks, E)
    i = idx.view(ranks, T // ranks, -1)
    return torch.stack([ops.load_balance_loss(p[r], i[r], E) for r in range(ranks)]).mean()
