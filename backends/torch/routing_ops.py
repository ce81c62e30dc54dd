"""Torch mirrors of ``locmoe.routing``: the same formulas and tie rules, on device and differentiable.

Every function here has a numpy twin of the same name in ``locmoe/routing/`` and is tested against it.
"""

from __future__ import annotations

import functools

import torch

from backends.torch.fusion import fused


def grap_scores(x: torch.Tensor, num_experts: int) -> torch.Tensor:
    """GrAP: x [T, d] -> [T, E], the mean of each of E contiguous feature groups.

    On CUDA as the equivalent fixed gate x @ A (A[i, e] = E/d where feature i is in group e): a bf16 reduction
    over 32-wide groups took 0.46 ms for 32k x 2048 on an H200, the GEMM microseconds. Elsewhere the mean
    itself, whose summation order the numpy reference shares, so routing decisions agree bit for bit."""
    T, d = x.shape
    if x.device.type == "cuda":
        return x @ _grap_matrix(d, num_experts, x.dtype, x.device)
    return x.view(T, num_experts, d // num_experts).mean(dim=-1)


@functools.cache
def _grap_matrix(d: int, num_experts: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    group = torch.arange(d, device=device) // (d // num_experts)
    return (group[:, None] == torch.arange(num_experts, device=device)).to(dtype) * (num_experts / d)


def counts_of(index: torch.Tensor, n: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """[n] int64: how often each value of ``index`` (in [0, n)) occurs, counting only ``where`` if given.

    ``torch.bincount`` sizes its output from ``index.max()`` on CUDA: a host sync. A scatter-add into a
    fixed-size buffer is the same count without one."""
    ones = torch.ones_like(index) if where is None else where.to(index.dtype)
    return torch.zeros(n, dtype=index.dtype, device=index.device).scatter_add_(0, index, ones)


def top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """[T, k] the k most probable experts, best first; ties go to the lower id (a stable descending sort)."""
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]


def sort_choices(probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Reorder each row of chosen experts best first (ties: lower id)."""
    by_id = torch.sort(idx, dim=-1).values
    vals = probs.gather(1, by_id)
    order = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    return by_id.gather(1, order)


def intra_node_first(probs: torch.Tensor, k: int, local_mask: torch.Tensor, rho: float) -> torch.Tensor:
    """Top-k where local experts with p >= rho * p_(k) replace the lowest-ranked remote choices.

    See ``locmoe.routing.selection.intra_node_first`` for the exact rule. probs, local_mask: [T, E].
    """
    idx = top_k(probs, k)
    if rho >= 1.0:
        return idx
    T, E = probs.shape
    threshold = rho * probs.gather(1, idx[:, -1:])
    neg_inf = probs.new_full((), float("-inf"))  # a fill, not a copy from the host (a sync on CUDA)
    for _ in range(k):
        chosen = torch.zeros(T, E, dtype=torch.bool, device=probs.device).scatter_(1, idx, True)
        cand = torch.where(local_mask & ~chosen & (probs >= threshold), probs, neg_inf)
        best_val, best = cand.max(dim=-1)  # max returns the first (lowest) index among equal values
        remote = ~local_mask.gather(1, idx)
        last_remote = k - 1 - remote.flip(-1).to(torch.int8).argmax(dim=-1)
        # no early exit: testing "any swap left" would cost a host sync per round
        swap = torch.isfinite(best_val) & remote.any(dim=-1)
        col = torch.where(swap, last_remote, 0)
        new = torch.where(swap, best, idx.gather(1, col[:, None])[:, 0])
        idx = sort_choices(probs, idx.scatter(1, col[:, None], new[:, None]))
    return idx


def combine_weights(chosen: torch.Tensor) -> torch.Tensor:
    """Renormalise the chosen probabilities over the k choices when k > 1 (k = 1 keeps the raw p)."""
    return chosen if chosen.shape[-1] == 1 else chosen / chosen.sum(dim=-1, keepdim=True)


def load_balance_loss(probs: torch.Tensor, expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """E · Σ_e f_e · P_e over each block of tokens: probs [..., T, E], expert_ids [..., T, k] -> [...] (a
    scalar for one rank's [T, E]); f from the choices (no gradient), P from probs."""
    *lead, T, k = expert_ids.shape
    ids = expert_ids.reshape(-1, T * k)  # [blocks, T·k]: counted per row by one scatter-add (no host sync)
    counts = torch.zeros(ids.shape[0], num_experts, dtype=ids.dtype, device=ids.device)
    f = counts.scatter_add_(1, ids, torch.ones_like(ids)).reshape(*lead, num_experts).to(probs.dtype) / (T * k)
    return num_experts * (f * probs.mean(dim=-2)).sum(dim=-1)


def locality_loss(log_probs: torch.Tensor, local_mask: torch.Tensor) -> torch.Tensor:
    """(1/T) Σ_t KL(uniform over the token's local allowed experts ‖ p_t); tokens without any give 0."""
    n_local = local_mask.sum(dim=-1)
    safe = torch.where(local_mask, log_probs, torch.zeros_like(log_probs)).sum(dim=-1)
    has = n_local > 0
    n = n_local.clamp(min=1).to(log_probs.dtype)
    per_token = torch.where(has, -torch.log(n) - safe / n, torch.zeros_like(safe))
    return per_token.mean()


def admission_order(expert: torch.Tensor, prob: torch.Tensor, locality: torch.Tensor) -> torch.Tensor:
    """Copy ids sorted by (expert, class, -prob, copy id).

    With float32 probabilities one stable sort of a packed int64 key does it: a non-negative float's bit
    pattern orders like its value, so (expert, class, ~bits) packs into 33 + 2 + 31 bits, and stability
    keeps copy-id order among ties — the order the three successive stable sorts below give."""
    if prob.dtype == torch.float32:  # (expert ids < 2^30: far more experts than any layer has)
        desc = 0x7FFFFFFF - prob.view(torch.int32).long()
        key = (expert.long() << 33) | (locality.long() << 31) | desc
        return torch.sort(key, stable=True).indices
    order = torch.sort(-prob, stable=True).indices
    order = order[torch.sort(locality[order], stable=True).indices]
    return order[torch.sort(expert[order], stable=True).indices]


def admit(expert: torch.Tensor, prob: torch.Tensor, locality: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """kept [C]: each expert admits its first ``capacity[e]`` copies in admission order."""
    order = admission_order(expert, prob, locality)
    sorted_expert = expert[order]
    counts = counts_of(sorted_expert, capacity.numel())
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(order.numel(), device=expert.device) - starts[sorted_expert]
    kept = torch.zeros_like(expert, dtype=torch.bool)
    kept[order] = position < capacity[sorted_expert]
    return kept


def expert_choice(probs: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert takes its ``capacity`` most probable tokens; returns (token, expert) sorted by token, expert."""
    T, E = probs.shape
    take = min(capacity, T)
    order = torch.sort(probs, dim=0, descending=True, stable=True).indices[:take]  # [take, E]
    token = order.t().reshape(-1)
    expert = torch.arange(E, device=probs.device).repeat_interleave(take)
    ok = probs[token, expert] > 0
    token, expert = token[ok], expert[ok]
    key = token * E + expert
    sort = torch.sort(key).indices
    return token[sort], expert[sort]


def gate_angles(vectors: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[T, E] angles between token vectors [T, n] and gate directions [n, E]; zero vectors give π/2."""
    dot = vectors @ directions
    norms = vectors.norm(dim=-1, keepdim=True) * directions.norm(dim=0, keepdim=True)
    cos = torch.where(norms > 0, dot / norms.clamp(min=torch.finfo(dot.dtype).tiny), torch.zeros_like(dot))
    return torch.arccos(cos.clamp(-1.0, 1.0))


def basis_angles(vectors: torch.Tensor) -> torch.Tensor:
    """``gate_angles(vectors, I)``, the GrAP case, without the identity: multiplying by I and dividing by its
    unit column norms are exact, so the values are the same bits, in four kernels fewer."""
    norms = vectors.norm(dim=-1, keepdim=True)
    cos = torch.where(norms > 0, vectors / norms.clamp(min=torch.finfo(vectors.dtype).tiny), torch.zeros_like(vectors))
    return torch.arccos(cos.clamp(-1.0, 1.0))


def expert_angles(
    angles: torch.Tensor, expert: torch.Tensor, num_experts: int, quantile: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert cone half-angle δ_e (float64) on the device: the max, or numpy's default ("linear")
    quantile computed as ``np.quantile`` does (order statistics at floor/ceil of (n−1)·q, its ``_lerp``), so
    the result is bit-identical to the numpy twin without moving the copies to the host."""
    angles = angles.double()
    if quantile >= 1.0:
        seen = counts_of(expert, num_experts) > 0
        delta = torch.zeros(num_experts, dtype=torch.float64, device=angles.device)
        return delta.scatter_reduce(0, expert, angles, "amax", include_self=False), seen
    return quantile_of_sorted(*sort_by_expert(angles, expert, num_experts), quantile)


def sort_by_expert(angles: torch.Tensor, expert: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the copies' angles ordered by expert, then by angle; [E] copies per expert)."""
    by_angle = torch.argsort(angles)
    order = by_angle[torch.argsort(expert[by_angle], stable=True)]
    return angles[order], counts_of(expert, num_experts)


def quantile_of_sorted(
    ordered: torch.Tensor, counts: torch.Tensor, quantile: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(δ [E]: each expert's ``quantile`` of its sorted angles, 0 where it has none; seen [E])."""
    seen = counts > 0
    start = torch.cumsum(counts, 0) - counts
    n = counts.clamp(min=1)
    virtual = (n - 1).double() * quantile
    lo = torch.floor(virtual)
    gamma = virtual - lo
    lo = lo.long()
    hi = torch.minimum(lo + 1, n - 1)
    last = max(ordered.numel() - 1, 0)
    a = ordered[(start + lo).clamp(max=last)]
    b = ordered[(start + hi).clamp(max=last)]
    diff = b - a
    value = torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return torch.where(seen, value, torch.zeros_like(value)), seen


@fused
def quantile_cone_counts(
    ordered: torch.Tensor,
    counts: torch.Tensor,
    ema: torch.Tensor,
    angles: torch.Tensor,
    quantile: float,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``quantile`` bound rule's first half, after the sort: each expert's quantile angle, the angle
    average's update, and this rank's tokens inside each cone. Returns (new angle average, inside [E] float64).
    On CUDA one fused kernel chain instead of ~30 launches over E numbers; elsewhere these ops eagerly
    (bit-identical to the numpy twin)."""
    delta, seen = quantile_of_sorted(ordered, counts, quantile)
    ema = update_angle_ema(ema, delta, seen, momentum)
    return ema, (angles <= ema[None, :]).sum(dim=0).double()


@fused
def quantile_capacity(
    inside: torch.Tensor, ema: torch.Tensor, k: int, num_tokens: int, slack: float, floor: int, factor_cap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second half, from the group's inside counts: ([E] capacities, the bound before the floor)."""
    capacity = per_expert_bound(inside, k, num_tokens, slack)
    return torch.clamp(unseen_fallback(capacity, ema, factor_cap), min=floor), capacity.max()


def unseen_fallback(capacity: torch.Tensor, ema: torch.Tensor, factor_cap: int) -> torch.Tensor:
    """[E] the factor capacity for experts without an angle average (NaN: never routed to)."""
    return torch.where(torch.isnan(ema), torch.full_like(capacity, factor_cap), capacity)


def per_expert_bound(inside: torch.Tensor, k: int, num_tokens: int, slack: float) -> torch.Tensor:
    """The ``quantile`` rule's [E] capacities ⌈slack·k·T·σ_e⌉ clipped to [1, k·T], σ_e = inside_e / Σ inside
    (uniform when no token is inside any cone): ``locmoe.routing.capacity.per_expert_bound`` of
    ``empirical_cone_shares`` on the device, the same float64 operations in the same order."""
    total = inside.sum()
    shares = torch.where(total > 0, inside / total, torch.full_like(inside, 1.0 / inside.numel()))
    c = torch.ceil(slack * k * num_tokens * shares - 1e-9).long()
    return c.clamp(1, k * num_tokens)


def update_angle_ema(ema: torch.Tensor, delta: torch.Tensor, seen: torch.Tensor, momentum: float) -> torch.Tensor:
    """δ̄_e ← m·δ̄_e + (1−m)·δ_e for experts seen this step; an expert never seen has no average (NaN) and takes
    its first δ as it is (the numpy twin says why). Decided on the device: no host sync."""
    blended = torch.where(torch.isnan(ema), delta, momentum * ema + (1.0 - momentum) * delta)
    return torch.where(seen, blended, ema)
