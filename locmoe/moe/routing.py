"""The router's control flow: gate scores → probabilities → each token's expert choices, plus the losses.

Mirrors ``locmoe.routing.router.route`` (the numpy reference). The router sees this rank's tokens — their
hidden states, ids and domains, and which experts sit on each token's node — never ranks or collectives:
capacity and admission happen in the dispatcher, which sees the whole expert-parallel group, and so does
expert choice's selection (``expert_choice_copies``), which is a choice over the group's tokens.

``router`` is the backend's module shell: it holds the parameters and constants under the checkpoint names
(``gate_weight``, ``gate_bias``, ``selection_bias``, ``hash_table``, ``domain_groups``, ``domain_member``,
``node_table``, ``node_of_expert``, ``grap_columns``) and ``router.moe``, the layer's config.
"""

from __future__ import annotations

from typing import Optional

from locmoe.moe.records import RouterOutput, Tensor
from locmoe.moe.surface import MoEOps
from locmoe.routing.capacity import factor_capacity


def route(
    ops: MoEOps,
    router,
    x: Tensor,
    local: Tensor,
    blocks: int,
    token_ids: Optional[Tensor] = None,
    domain: Optional[Tensor] = None,
    losses: bool = True,
) -> RouterOutput:
    """Route x [T, d]. ``local`` [T, E]: the experts on each token's node; the losses are averaged over
    ``blocks`` equal blocks of tokens (the ranks one process stands in for; 1 on a real rank). Serving
    passes ``losses=False``: the same choices, the losses 0."""
    moe = router.moe
    r, E, T = moe.router, moe.num_experts, x.shape[0]
    domain = ops.zeros((T,), "int64", like=x) if domain is None else ops.cast(domain, "int64")
    allowed = ops.take_rows(router.domain_member, domain) if moe.domains.num_domains > 1 else None
    local = local if allowed is None else local & allowed
    zero = ops.zeros((), "float32", like=x)
    if r.kind == "hash":
        if moe.force_balance:
            expert = forced_experts(ops, router, T, blocks, x)[:, 0]
        else:
            expert = hash_experts(ops, router, token_ids, domain)
        ones = ops.ones((T,), "float32", like=x)
        return RouterOutput(ops.arange(T, like=x), expert, ones, ones, zero, zero, None, expert[:, None])
    scores = router_scores(ops, router, x)
    logits = paper_gate(ops, scores, r.gate_activation, router.gate_bias) / r.temperature
    if allowed is not None:
        logits = ops.masked_fill(logits, ~allowed, float("-inf"))
    affinity, probs, log_probs = ops.affinities(r.scoring, logits)
    angles = capacity_angles(ops, router, x, scores) if moe.capacity.mode == "bound" else None
    if r.kind == "expert_choice":
        return RouterOutput(None, None, None, None, zero, zero, angles, None, probs=probs)
    idx, counted = choose(ops, router, ops.detach(affinity), ops.detach(probs), local, allowed)
    if moe.force_balance:  # the router's scores and losses as usual, its choice replaced (a benchmark's)
        gate_counts = r.kind == "locmoe" and r.balance_counts == "gate"
        idx = forced_experts(ops, router, T, blocks, x)
        counted = counted if gate_counts else idx
    chosen = ops.take_along_rows(affinity, idx)  # [T, k]
    token = ops.repeat_interleave(ops.arange(T, like=x), r.top_k)
    aux, loc, z = zero, zero, None
    if losses:
        aux = mean_over_blocks(ops, probs, counted, E, blocks)
        if r.locality_loss == "token":
            loc = ops.locality_loss(log_probs, local)
        else:
            loc = ops.batch_locality_loss(probs, local, allowed, blocks, r.locality_smoothing)
        z = ops.router_z_loss(logits) if r.z_loss_coef else None
    return RouterOutput(
        token,
        idx.reshape(-1),
        ops.combine_weights(chosen).reshape(-1),
        ops.detach(chosen).reshape(-1),
        aux,
        loc,
        angles,
        idx,
        z,
    )


def node_preference(ops: MoEOps, router, x: Tensor, domain: Optional[Tensor] = None) -> Tensor:
    """[T, N] the share of each token's gate probability on each node's experts: what sequence placement
    (``locmoe.data.placement``) reads, before any intra-node rule, capacity or state update."""
    moe = router.moe
    r = moe.router
    logits = paper_gate(ops, router_scores(ops, router, x), r.gate_activation, router.gate_bias) / r.temperature
    if moe.domains.num_domains > 1:
        domain = ops.zeros((x.shape[0],), "int64", like=x) if domain is None else ops.cast(domain, "int64")
        logits = ops.masked_fill(logits, ~ops.take_rows(router.domain_member, domain), float("-inf"))
    _, probs, _ = ops.affinities(r.scoring, logits)
    return ops.matmul(probs, ops.transpose(ops.cast(router.node_mask, "float32")))


def router_scores(ops: MoEOps, router, x: Tensor) -> Tensor:
    """[T, E] gate scores ω·x: GrAP's fixed orthogonal gate, or the learned one."""
    if router.moe.router.gate == "grap":
        return ops.grap_scores(x, router.moe.num_experts)
    return ops.matmul(x, router.gate_weight)


def paper_gate(ops: MoEOps, scores: Tensor, activation: str, bias: Optional[Tensor]) -> Tensor:
    """G = ReLU(ω·x + ε) (LocMoE Eq. 3); ``bias`` None = no ε, ``activation`` "relu" or "none"."""
    g = scores if bias is None else scores + bias
    return ops.relu(g) if activation == "relu" else g


def hash_experts(ops: MoEOps, router, token_ids: Optional[Tensor], domain: Tensor) -> Tensor:
    """[T] expert of each token: slot table[token_id] of its domain's expert group."""
    if token_ids is None:
        raise ValueError("router hash: token_ids are required (the hash router maps token ids to experts)")
    ops.check_index_range(token_ids, router.hash_table.shape[0], "token ids", " for the hash router")
    per_group = router.domain_groups.shape[1]
    slot = ops.take(router.hash_table, ops.cast(token_ids, "int64")) % per_group
    return ops.take(router.domain_groups.reshape(-1), domain * per_group + slot)


def capacity_angles(ops: MoEOps, router, x: Tensor, scores: Tensor) -> Tensor:
    """[T, E] float64 (no gradient): the angles the capacity bound measures — gate-space angles between each
    token and each expert's gate direction, or for the paper rule the token-space cosine distances."""
    moe = router.moe
    if moe.capacity.bound_rule == "paper":  # LocMoE Theorem 1 works in the token space
        grap = moe.router.gate == "grap"
        return ops.cosine_deviation(x, router.grap_columns if grap else router.gate_weight)
    if moe.router.gate == "grap":
        return ops.basis_angles(scores)  # GrAP's gate directions are the basis of the score space
    return ops.gate_angles(x, router.gate_weight)


def choose(
    ops: MoEOps, router, p: Tensor, probs: Tensor, local: Tensor, allowed: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """(idx [T, k] the chosen experts, the choices the load-balance loss counts); ``p`` the affinities the
    top-k routers select by, ``probs`` the probabilities LocMoE's intra-node-first rule compares."""
    r, k = router.moe.router, router.moe.router.top_k
    if r.kind == "locmoe":  # (the config allows balance_counts "gate" for LocMoE only)
        # on a single node every expert is local and the intra-node-first rule cannot change a choice
        idx = ops.top_k(probs, k) if router.single_node else ops.intra_node_first(probs, k, local, r.rho)
        return idx, (ops.top_k(probs, k) if r.balance_counts == "gate" else idx)
    bias = router.selection_bias
    if bias is None and not r.node_limit:
        idx = ops.top_k(p, k)
        return idx, idx
    sel = ops.selection_scores(p, None if bias is None else ops.detach(bias), allowed)
    if r.node_limit:
        idx = ops.node_limited_top_k(sel, k, r.node_limit, router.node_table, router.node_of_expert, r.node_score)
    else:
        idx = ops.top_k(sel, k)
    return idx, idx


def forced_experts(ops: MoEOps, router, T: int, blocks: int, like: Tensor) -> Tensor:
    """[T, k] ``moe.force_balance``'s round-robin choice (``locmoe.routing.forced``): token i of its block
    (its rank's tokens) takes experts (i·k + j) mod E."""
    k, E = router.moe.router.top_k, router.moe.num_experts
    # i·k + j, counted from the first token of each block
    return (ops.arange(T * k, like=like) % ((T // blocks) * k)).reshape(T, k) % E


def mean_over_blocks(ops: MoEOps, probs: Tensor, idx: Tensor, num_experts: int, blocks: int) -> Tensor:
    """The load-balance loss of each block of tokens (a source rank's), averaged; the blocks as one batch."""
    T = probs.shape[0]
    p = probs.reshape(blocks, T // blocks, num_experts)
    i = idx.reshape(blocks, T // blocks, -1)
    return ops.mean(ops.load_balance_loss(p, i, num_experts))


def expert_choice_copies(
    ops: MoEOps, out: RouterOutput, group_probs: Tensor, my_block: int, factor: float, k: int
) -> RouterOutput:
    """Expert choice: each expert takes its ``capacity`` most probable tokens of the whole group
    (``group_probs`` [W·T, E], this rank's tokens are block ``my_block``); returns ``out`` with this rank's
    copies filled in."""
    assert out.probs is not None, "expert choice routers give probs"
    T, E = out.probs.shape
    capacity = factor_capacity(factor, k, group_probs.shape[0], E)
    token, expert = ops.expert_choice(group_probs, capacity)
    mine = ops.nonzero((token >= my_block * T) & (token < (my_block + 1) * T))
    token, expert = ops.take(token, mine) - my_block * T, ops.take(expert, mine)
    weight = ops.take(out.probs.reshape(-1), token * E + expert)
    return RouterOutput(
        token, expert, weight, ops.detach(weight), out.aux_loss, out.locality_loss, out.angles, None, probs=out.probs
    )
