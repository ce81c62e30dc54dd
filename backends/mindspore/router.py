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

from backends.mindspore import routing_ops as rops
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
    token: Tensor                # [C] local token index (int64)
    expert: Tensor               # [C]
    weight: Tensor               # [C] combine weight (differentiable)
    prob: Tensor                 # [C] routing probability (admission priority, no gradient)
    aux_loss: Tensor             # scalar, load balance (mean over source ranks)
    locality_loss: Tensor        # scalar
    angles: Optional[Tensor]     # [T, E] float64 gate-space angles (capacity mode bound), else None
    choices: Optional[Tensor]    # [T, k] token-choice routers' experts, else None


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
        scores = self.scores(x)
        logits = scores / self.temperature
        if allowed is not None:
            logits = ops.masked_fill(logits, ~allowed, float("-inf"))
        log_probs64 = rops.log_softmax(logits)                   # float64 off Ascend (see log_softmax)
        log_probs, probs = log_probs64.astype(ms.float32), ops.exp(log_probs64).astype(ms.float32)
        angles = self._angles(x, scores) if self.capacity_cfg.mode == "bound" else None
        if self.kind == "expert_choice":
            return self._expert_choice(probs, T, gather, ep_rank, angles, zero)
        p = ops.stop_gradient(probs)
        if self.kind == "locmoe" and not self.single_node:
            idx = rops.intra_node_first(p, self.k, local, self.rho)
        else:
            idx = rops.top_k(p, self.k)
        chosen = ops.gather_elements(probs, 1, idx)                                 # [T, k]
        token = ops.repeat_interleave(ops.arange(T, dtype=ms.int64), self.k, 0)
        aux = _mean_over_ranks(probs, idx, E, num_source_ranks)
        loc = rops.locality_loss(log_probs, local)
        return RouterOutput(token, idx.reshape(-1), rops.combine_weights(chosen).reshape(-1),
                            ops.stop_gradient(chosen).reshape(-1), aux, loc, angles, idx)

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
