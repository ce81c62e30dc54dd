"""MindSpore mirrors of ``locmoe.routing``: the same formulas and tie rules, in MindSpore ops, differentiable
where the reference is a formula.

Every function here has a numpy twin of the same name in ``locmoe/routing/`` (and a torch twin in
``backends/torch/routing_ops.py``) and is tested against it. MindSpore documents no stable sort outside
Ascend (``mint.sort(stable=True)`` is Ascend-only) and no tie order for ``ops.sort``/``argmax``, so every
tie rule is made explicit: :func:`stable_argsort` sorts unique integer keys (dense rank, index), and
"lowest id among the maxima" is computed with a min over the ids, never left to an argmax.
"""

from __future__ import annotations

import functools
from typing import cast

import mindspore as ms
import numpy as np
from mindspore import Tensor, mint, ops


@functools.lru_cache(maxsize=256)
def arange(n: int, dtype=ms.int64) -> Tensor:
    """0 .. n-1 as a constant, made once per (n, dtype) (``ops.arange`` takes its dtype as an argument, which
    ``jit``'s trace capture cannot record; callers never write into it)."""
    return Tensor(np.arange(n), dtype)


def _on_ascend() -> bool:
    return ms.get_context("device_target") == "Ascend"


def dense_rank(values: Tensor, descending: bool = False) -> Tensor:
    """[..., n] int64 rank of each value along the last axis; equal values share a rank (0 = first in order)."""
    n = values.shape[-1]
    if n == 0:
        return ops.zeros(values.shape, ms.int64)
    sorted_values, order = ops.sort(values, axis=-1, descending=descending)
    new = (sorted_values[..., 1:] != sorted_values[..., :-1]).astype(ms.int64)
    rank_sorted = ops.cumsum(ops.cat([ops.zeros((*values.shape[:-1], 1), ms.int64), new], axis=-1), -1)
    return ops.gather_elements(rank_sorted, values.ndim - 1, inverse_permutation(order.astype(ms.int64)))


def inverse_permutation(order: Tensor) -> Tensor:
    """int64 ``inv`` with inv[..., order[..., i]] = i, ``order`` a permutation along its last axis: one
    scatter, where sorting ``order`` was a CPU Sort of ~0.7 ms on [4096] (profiled). The positions are
    distinct, so the scatter's threads have nothing to race on (its add reduction does: ``counts_of``)."""
    n = order.shape[-1]
    if n == 0:
        return order.astype(ms.int64)
    positions = ops.broadcast_to(arange(n, ms.int64), order.shape)
    return ops.tensor_scatter_elements(ops.zeros(order.shape, ms.int64), order, positions, axis=-1)


def stable_argsort(values: Tensor, axis: int = -1, descending: bool = False) -> Tensor:
    """int64 indices sorting ``values`` along ``axis`` (1-D or 2-D); equal values keep their index order."""
    if axis in (0, -2) and values.ndim == 2:
        return stable_argsort(values.T, -1, descending).T
    if _on_ascend():
        return mint.argsort(values, dim=-1, descending=descending, stable=True).astype(ms.int64)
    n = values.shape[-1]
    if n == 0:
        return ops.zeros(values.shape, ms.int64)
    index = arange(n, ms.int64)
    key = dense_rank(values, descending) * n + index  # unique per row: (rank, index)
    return ops.sort(key, axis=-1)[1].astype(ms.int64)


def argsort_unique(key: Tensor) -> Tensor:
    """int64 indices sorting a 1-D tensor of *distinct* integers (any sort gives the same answer)."""
    if key.shape[0] == 0:
        return ops.zeros((0,), ms.int64)
    if _on_ascend():
        return mint.argsort(key, dim=-1, stable=True).astype(ms.int64)
    return ops.sort(key, axis=-1)[1].astype(ms.int64)


def grap_scores(x: Tensor, num_experts: int) -> Tensor:
    """GrAP: x [T, d] -> [T, E], the mean of each of E contiguous feature groups."""
    T, d = x.shape
    return x.reshape(T, num_experts, d // num_experts).mean(axis=-1)


def log_softmax(z: Tensor) -> Tensor:
    """Row-wise log-softmax of [T, E] logits (-inf entries give -inf), differentiable.

    Off Ascend it is computed in float64 from elementary ops and returned in float64: MindSpore's CPU
    LogSoftmax kernel (even for float64 input) and its float32 exp are accurate to ~4e-6 relative only
    (measured), enough to break near-ties differently from the reference; its float64 exp and log are exact.
    """
    if not _on_ascend():
        z = z.astype(ms.float64)
    m = ops.stop_gradient(ops.amax(z, -1, keepdims=True))  # the shift cancels in the gradient
    shifted = z - m
    return shifted - ops.log(ops.exp(shifted).sum(axis=-1, keepdims=True))


# top-k by rounds of max (below) up to this many picks; a sort beyond
_MAX_ROUNDS = 4


def top_k(probs: Tensor, k: int) -> Tensor:
    """[T, k] the k most probable experts, best first; ties go to the lower id."""
    if _on_ascend() or k > _MAX_ROUNDS:
        return stable_argsort(probs, -1, descending=True)[:, :k]
    return top_k_by_rounds(probs, k)


def top_k_by_rounds(probs: Tensor, k: int) -> Tensor:
    """``top_k`` as k rounds of (the row's max, the lowest id holding it) over the experts not yet taken:
    what a stable descending sort puts first, without a sort. Off Ascend the stable sort is three CPU sorts
    (:func:`stable_argsort`, ~0.5-0.9 ms each on [2048, 8], compiled); a round is a few elementwise kernels
    over [T, E]. NaN counts as -inf (every id stays in range; a NaN input is ``moe.check_finite``'s to report)."""
    E = probs.shape[1]
    ids = arange(E, ms.int64).reshape(1, E)
    v = ops.masked_fill(probs, ops.isnan(probs), float("-inf"))
    free = None  # [T, E] not yet taken (after the first round): a taken -inf must not win a tie among -inf
    picks = []
    for r in range(k):
        open_v = v if free is None else ops.masked_fill(v, ~free, float("-inf"))
        best = ops.amax(open_v, -1, keepdims=True)
        hit = open_v == best if free is None else (open_v == best) & free
        pick = ops.amin(ops.where(hit, ids, E), -1, keepdims=True)  # [T, 1]
        picks.append(pick)
        if r + 1 < k:
            free = ids != pick if free is None else free & (ids != pick)
    return picks[0] if k == 1 else ops.cat(picks, -1)


def sort_choices(probs: Tensor, idx: Tensor) -> Tensor:
    """Reorder each row of chosen experts best first (ties: lower id)."""
    if idx.shape[-1] == 2 and not _on_ascend():
        return _order_pair(probs, idx)
    by_id = ops.sort(idx, axis=-1)[0]
    vals = ops.gather_elements(probs, 1, by_id)
    return ops.gather_elements(by_id, 1, stable_argsort(vals, -1, descending=True))


def _order_pair(probs: Tensor, idx: Tensor) -> Tensor:
    """``sort_choices`` for two choices: swap a row's pair where the second is better (a higher p, or an equal
    p and a lower id). Ten small kernels where the general path runs four CPU sorts (intra-node-first calls it
    k times per layer). A row holding NaN keeps its order (its ids stay valid)."""
    vals = ops.gather_elements(probs, 1, idx)
    a, b = ops.split(idx, 1, axis=1)
    va, vb = ops.split(vals, 1, axis=1)
    swap = (vb > va) | ((vb == va) & (b < a))  # [T, 1]
    return ops.where(swap, ops.cat([b, a], 1), idx)


def intra_node_first(probs: Tensor, k: int, local_mask: Tensor, rho: float) -> Tensor:
    """Top-k where local experts with p >= rho * p_(k) replace the lowest-ranked remote choices.

    See ``locmoe.routing.selection.intra_node_first`` for the exact rule. probs, local_mask: [T, E].
    """
    idx = top_k(probs, k)
    if rho >= 1.0:
        return idx
    T, E = probs.shape
    # the loop's broadcasts as reshapes: a new axis by indexing (t[:, None]) is a StridedSlice on CPU, ~0.15 ms
    # each and ~10 ms a step over this loop (profiled); a reshape is a view
    ids = arange(E, ms.int64)
    ids_row, ids_cube, slots_row = ids.reshape(1, E), ids.reshape(1, 1, E), arange(k, ms.int64).reshape(1, k)
    threshold = rho * ops.gather_elements(probs, 1, idx[:, -1:])
    neg_inf = ops.full_like(probs, float("-inf"))
    for _ in range(k):
        chosen = _chosen(idx, ids_row, ids_cube)  # [T, E]
        cand = ops.where(local_mask & ~chosen & (probs >= threshold), probs, neg_inf)
        best_val = ops.amax(cand, axis=-1, keepdims=True)  # [T, 1]
        best = ops.amin(ops.where(cand == best_val, ids_row, E), axis=-1, keepdims=True)  # lowest id among maxima
        remote = ~ops.gather_elements(local_mask, 1, idx)  # [T, k]
        last_remote = ops.amax(ops.where(remote, slots_row, -1), axis=-1, keepdims=True)  # lowest-ranked remote
        swap = ops.isfinite(best_val) & remote.any(axis=-1, keep_dims=True)  # [T, 1]
        col = ops.where(swap, last_remote, 0)
        new = ops.where(swap, best, ops.gather_elements(idx, 1, col))  # [T, 1]
        idx = sort_choices(probs, ops.where(slots_row == col, new, idx))
    return idx


def _chosen(idx: Tensor, ids_row: Tensor, ids_cube: Tensor) -> Tensor:
    """[T, E] whether each expert is among the row's k choices; for k <= 4 as k compares OR-ed (the [T, k, E]
    compare's middle-axis ReduceAny cost ~0.6 ms on CPU, profiled)."""
    T, k = idx.shape
    if k > _MAX_ROUNDS:
        return (idx.reshape(T, k, 1) == ids_cube).any(axis=1)
    columns = ops.split(idx, 1, axis=1) if k > 1 else (idx,)
    chosen = cast(Tensor, columns[0] == ids_row)  # a Tensor's == is typed bool
    for c in columns[1:]:
        chosen = chosen | (c == ids_row)
    return chosen


def combine_weights(chosen: Tensor) -> Tensor:
    """Renormalise the chosen probabilities over the k choices when k > 1 (k = 1 keeps the raw p)."""
    return chosen if chosen.shape[-1] == 1 else chosen / chosen.sum(axis=-1, keepdims=True)


def load_balance_loss(probs: Tensor, expert_ids: Tensor, num_experts: int) -> Tensor:
    """E · Σ_e f_e · P_e over each block of tokens: probs [..., T, E], expert_ids [..., T, k] -> [...] (a
    scalar for one rank's [T, E]); f from the choices (no gradient), P from probs. All blocks at once: one
    process standing in for W ranks has W blocks, and a loop over them was ~60 kernels a layer."""
    *lead, T, k = expert_ids.shape
    ids = arange(num_experts, expert_ids.dtype).reshape(1, num_experts)
    one_hot = expert_ids.reshape(*lead, T * k, 1) == ids  # [..., T·k, E]
    f = ops.stop_gradient(one_hot.astype(probs.dtype).sum(axis=-2) / (T * k))
    return num_experts * (f * probs.mean(axis=-2)).sum(axis=-1)


def locality_loss(log_probs: Tensor, local_mask: Tensor) -> Tensor:
    """(1/T) Σ_t KL(uniform over the token's local allowed experts ‖ p_t); tokens without any give 0."""
    n_local = local_mask.astype(ms.int64).sum(axis=-1)
    safe = ops.where(local_mask, log_probs, ops.zeros_like(log_probs)).sum(axis=-1)
    has = n_local > 0
    n = ops.clamp(n_local, min=1).astype(log_probs.dtype)
    per_token = ops.where(has, -ops.log(n) - safe / n, ops.zeros_like(safe))
    return per_token.mean()


def admission_order(expert: Tensor, prob: Tensor, locality: Tensor) -> Tensor:
    """Copy ids sorted by (expert, class, -prob, copy id): one sort of unique integer keys."""
    C = expert.shape[0]
    copy_id = arange(C, ms.int64)
    prob_rank = dense_rank(prob, descending=True)  # 0 = most probable
    key = ((expert.astype(ms.int64) * 3 + locality.astype(ms.int64)) * C + prob_rank) * C + copy_id
    return argsort_unique(key)


def admit(expert: Tensor, prob: Tensor, locality: Tensor, capacity: Tensor) -> Tensor:
    """kept [C]: each expert admits its first ``capacity[e]`` copies in admission order."""
    if expert.shape[0] == 0:
        return ops.zeros((0,), ms.bool_)
    order = admission_order(expert, prob, locality)
    sorted_expert = ops.gather(expert.astype(ms.int64), order, 0)
    start = ops.searchsorted(sorted_expert, sorted_expert)  # first place of each expert's queue
    position = arange(order.shape[0], ms.int64) - start
    kept_sorted = position < ops.gather(capacity.astype(ms.int64), sorted_expert, 0)
    return ops.gather(kept_sorted, inverse_permutation(order), 0)  # back to copy-id order


def expert_choice(probs: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Each expert takes its ``capacity`` most probable tokens; returns (token, expert) sorted by token, expert."""
    T, E = probs.shape
    take = min(capacity, T)
    order = stable_argsort(probs, axis=0, descending=True)[:take]  # [take, E]
    token = order.T.reshape(-1)
    expert = ops.repeat_interleave(arange(E, ms.int64), take, 0)
    ok = ops.gather(probs.reshape(-1), token * E + expert, 0) > 0
    keep = ops.nonzero(ok).reshape(-1)
    token, expert = ops.gather(token, keep, 0), ops.gather(expert, keep, 0)
    sort = argsort_unique(token * E + expert)
    return ops.gather(token, sort, 0), ops.gather(expert, sort, 0)


def gate_angles(vectors: Tensor, directions: Tensor) -> Tensor:
    """[T, E] angles between token vectors [T, n] and gate directions [n, E]; zero vectors give π/2."""
    dot = ops.matmul(vectors, directions)
    # norm: typed Optional
    norms = cast(Tensor, ops.norm(vectors, dim=-1))[:, None] * cast(Tensor, ops.norm(directions, dim=0))[None, :]
    safe = ops.where(norms > 0, norms, ops.ones_like(norms))
    cos = ops.where(norms > 0, dot / safe, ops.zeros_like(dot))
    return cast(Tensor, ops.acos(ops.clamp(cos, -1.0, 1.0)))  # typed Optional
