"""The router: gate scores → probabilities → each token's expert choices, plus the auxiliary losses.

Mirrors ``locmoe.routing.router.route`` (the numpy reference) and ``backends.torch.router``; the capacity
and the admission of copies happen in the dispatcher, which sees the whole expert-parallel group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from backends.mindspore import routing_extras as extras
from backends.mindspore import routing_ops as rops
from locmoe.config.schema import MoEConfig
from locmoe.routing.baselines import hash_table
from locmoe.routing.capacity import factor_capacity
from locmoe.routing.domains import domain_expert_groups
from locmoe.routing.gating import grap_gate_matrix
from locmoe.routing.node_limited import check_node_limit, node_expert_table
from locmoe.topology import ExpertPlacement


@dataclass
class RouterOutput:
    """Routing of this rank's T tokens into C copies (token, expert) with their combine weights.

    For expert choice the copies come from the whole group's probabilities (``gather``), and ``token`` still
    indexes this rank's tokens.
    """
    token: Tensor                # [C] local token index (int64)
    expert: Tensor               # [C]
    weight: Tensor               # [C] combine weight (differentiable)
    prob: Tensor                 # [C] routing probability (admission priority, no gradient)
    aux_loss: Tensor             # scalar, load balance (mean over source ranks)
    locality_loss: Tensor        # scalar
    angles: Optional[Tensor]     # [T, E] float64 gate-space angles (capacity mode bound; rule paper: the
                                 # token-space cosine distances), else None
    choices: Optional[Tensor]    # [T, k] token-choice routers' experts, else None
    z_loss: Optional[Tensor] = None  # scalar router z-loss (token-choice routers)


class Router(nn.Cell):
    def __init__(self, moe: MoEConfig, d_model: int, vocab_size: int, placement: ExpertPlacement):
        super().__init__()
        r = moe.router
        self.kind, self.gate, self.k = r.kind, r.gate, r.top_k
        self.num_experts, self.temperature, self.rho = moe.num_experts, r.temperature, r.rho
        self.capacity_cfg, self.num_domains = moe.capacity, moe.domains.num_domains
        # the hash router has no gate at all; GrAP's gate is fixed, so only a learned gate is a parameter
        learned = r.gate == "dense" and r.kind != "hash"
        self.gate_weight = Parameter(Tensor(np.zeros((d_model, moe.num_experts), np.float32)),
                                     name="gate_weight") if learned else None
        groups = domain_expert_groups(moe.domains.num_domains, moe.num_experts, moe.domains.seed)
        self.domain_groups = Tensor(groups)                                   # [D, E/D]
        member = np.zeros((len(groups), moe.num_experts), dtype=bool)
        member[np.arange(len(groups))[:, None], groups] = True
        self.domain_member = Tensor(member)                                   # [D, E]
        self.node_mask = Tensor(placement.node_mask())                        # [N, E]
        # on a single node every expert is local and the intra-node-first rule cannot change a choice
        self.single_node = placement.topology.num_nodes == 1
        self.devices_per_node = placement.topology.devices_per_node
        table = hash_table(vocab_size, moe.num_experts // moe.domains.num_domains, r.hash_seed)
        # the hash table is state of the hash router only (checkpointed there, as in the torch backend)
        self.hash_table = Parameter(Tensor(table), name="hash_table", requires_grad=False) \
            if r.kind == "hash" else Tensor(table)
        # Moving average of the experts' cone angles (capacity bound); NaN until the first step.
        self.angle_ema = Parameter(Tensor(np.full(moe.num_experts, np.nan)), name="angle_ema", requires_grad=False)
        self._init_options(moe, d_model, placement, groups)

    def _init_options(self, moe: MoEConfig, d_model: int, placement: ExpertPlacement, groups: np.ndarray) -> None:
        """The issue-14 options: the paper's gate (ReLU, learned ε), sigmoid scoring, the loss-free selection
        bias (state, updated by the dispatcher), node-limited top-k, the batch locality loss."""
        r, E = moe.router, moe.num_experts
        self.router_cfg = r
        self.gate_bias = Parameter(Tensor(np.zeros(E, np.float32)), name="gate_bias") \
            if r.gate_bias and r.kind != "hash" else None
        self.selection_bias = Parameter(Tensor(np.zeros(E, np.float32)), name="selection_bias",
                                        requires_grad=False) if r.bias_update_rate > 0 else None
        self.node_table = node_expert_table(placement) if r.node_limit else None
        if r.node_limit:
            check_node_limit(self.node_table, groups, r.node_limit, r.top_k)
        paper = moe.capacity.mode == "bound" and moe.capacity.bound_rule == "paper"
        self.grap_columns = Tensor(grap_gate_matrix(d_model, E)) if paper and r.gate == "grap" else None

    def scores(self, x: Tensor) -> Tensor:
        """[T, E] gate scores."""
        return rops.grap_scores(x, self.num_experts) if self.gate == "grap" else ops.matmul(x, self.gate_weight)

    def construct(self, x: Tensor, token_rank: Tensor, num_source_ranks: int, token_ids: Optional[Tensor] = None,
                  domain: Optional[Tensor] = None, gather: Callable[[Tensor], Tensor] = lambda t: t,
                  ep_rank: int = 0) -> RouterOutput:
        """Route x [T, d].

        Args:
            token_rank: [T] each token's EP rank (all equal on a real rank; W blocks when one process emulates
                W ranks). The losses are averaged over ``num_source_ranks`` equal blocks of tokens.
            gather: concatenates a tensor over the EP group (identity in one process); ``ep_rank`` is this
                rank's block in the result. Only expert choice needs them.
        """
        T, E = x.shape[0], self.num_experts
        domain = ops.zeros(T, ms.int64) if domain is None else domain.astype(ms.int64)
        allowed = ops.gather(self.domain_member, domain, 0) if self.num_domains > 1 else None
        local = ops.gather(self.node_mask, token_rank // self.devices_per_node, 0)
        local = local if allowed is None else local & allowed
        zero = ops.zeros((), x.dtype)
        if self.kind == "hash":
            expert = self._hash_experts(token_ids, domain)
            ones = ops.ones(T, x.dtype)
            return RouterOutput(ops.arange(T, dtype=ms.int64), expert, ones, ones, zero, zero, None, expert[:, None])
        scores = self.scores(x)                       # ω·x: the capacity bound measures angles from it
        gated = extras.paper_gate(scores, self.router_cfg.gate_activation, self.gate_bias)
        logits = gated / self.temperature
        if allowed is not None:
            logits = ops.masked_fill(logits, ~allowed, float("-inf"))
        affinity, probs, log_probs = self._affinities(logits)
        angles = self._angles(x, scores) if self.capacity_cfg.mode == "bound" else None
        if self.kind == "expert_choice":
            return self._expert_choice(probs, T, gather, ep_rank, angles, zero)
        idx, counted = self._choose(ops.stop_gradient(affinity), local, allowed)
        chosen = ops.gather_elements(affinity, 1, idx)                              # [T, k]
        token = ops.repeat_interleave(ops.arange(T, dtype=ms.int64), self.k, 0)
        aux = _mean_over_ranks(probs, counted, E, num_source_ranks)
        if self.router_cfg.locality_loss == "batch":
            loc = extras.batch_locality_loss(probs, local, allowed, num_source_ranks,
                                             self.router_cfg.locality_smoothing).astype(ms.float32)
        else:
            loc = rops.locality_loss(log_probs, local)
        z = extras.router_z_loss(logits).astype(ms.float32) if self.router_cfg.z_loss_coef else None
        return RouterOutput(token, idx.reshape(-1), rops.combine_weights(chosen).reshape(-1),
                            ops.stop_gradient(chosen).reshape(-1), aux, loc, angles, idx, z)

    def _affinities(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(affinity the router selects and weighs by, p_t of the losses, log p_t), as the reference's."""
        if self.router_cfg.scoring == "sigmoid":
            return extras.sigmoid_affinities(logits)
        log_probs64 = rops.log_softmax(logits)                   # float64 off Ascend (see log_softmax)
        probs = ops.exp(log_probs64).astype(ms.float32)
        return probs, probs, log_probs64.astype(ms.float32)

    def _choose(self, p: Tensor, local: Tensor, allowed: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """(idx [T, k] the chosen experts, the choices the load-balance loss counts)."""
        r = self.router_cfg
        if self.kind == "locmoe":
            idx = rops.intra_node_first(p, self.k, local, self.rho) if not self.single_node else rops.top_k(p, self.k)
            return idx, (rops.top_k(p, self.k) if r.balance_counts == "gate" else idx)
        bias = None if self.selection_bias is None else ops.stop_gradient(self.selection_bias)
        sel = p if bias is None and not r.node_limit else extras.selection_scores(p, bias, allowed)
        if r.node_limit:
            idx = extras.node_limited_top_k(sel, self.k, r.node_limit, self.node_table, r.node_score)
        else:
            idx = rops.top_k(sel, self.k)
        return idx, idx

    def _hash_experts(self, token_ids: Optional[Tensor], domain: Tensor) -> Tensor:
        """[T] expert of each token: slot table[token_id] of its domain's group."""
        if token_ids is None:
            raise ValueError("router hash: token_ids are required (the hash router maps token ids to experts)")
        ids = token_ids.asnumpy()
        V = self.hash_table.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise ValueError(f"token ids must lie in [0, {V}) for the hash router, got [{ids.min()}, {ids.max()}]")
        per_group = self.domain_groups.shape[1]
        slot = ops.gather(self.hash_table, token_ids.astype(ms.int64), 0) % per_group
        return ops.gather(self.domain_groups.reshape(-1), domain * per_group + slot, 0)

    def _angles(self, x: Tensor, scores: Tensor) -> Tensor:
        # float64 so that the bound's comparisons agree with the numpy reference
        if self.capacity_cfg.bound_rule == "paper":
            return extras.cosine_deviation(x, self.grap_columns if self.gate == "grap" else self.gate_weight)
        if self.gate == "grap":
            eye = Tensor(np.eye(self.num_experts))
            return rops.gate_angles(ops.stop_gradient(scores).astype(ms.float64), eye)
        return rops.gate_angles(ops.stop_gradient(x).astype(ms.float64),
                                ops.stop_gradient(self.gate_weight).astype(ms.float64))

    def _expert_choice(self, probs: Tensor, T: int, gather, me: int, angles, zero) -> RouterOutput:
        all_probs = gather(ops.stop_gradient(probs))                                # [W*T, E]
        capacity = factor_capacity(self.capacity_cfg.factor, self.k, all_probs.shape[0], self.num_experts)
        token, expert = rops.expert_choice(all_probs, capacity)
        keep = ops.nonzero((token >= me * T) & (token < (me + 1) * T)).reshape(-1)
        token, expert = ops.gather(token, keep, 0) - me * T, ops.gather(expert, keep, 0)
        weight = ops.gather(probs.reshape(-1), token * self.num_experts + expert, 0)
        return RouterOutput(token, expert, weight, ops.stop_gradient(weight), zero, zero, angles, None)


def _mean_over_ranks(probs: Tensor, idx: Tensor, E: int, ranks: int) -> Tensor:
    """Load-balance loss per source rank (equal blocks of tokens), averaged."""
    T = probs.shape[0]
    p = probs.reshape(ranks, T // ranks, E)
    i = idx.reshape(ranks, T // ranks, -1)
    return ops.stack([rops.load_balance_loss(p[r], i[r], E) for r in range(ranks)]).mean()
