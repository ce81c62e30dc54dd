"""Locality-aware replica routing with load prediction (GRACE-MoE's online phase).

A token copy for expert e, on device s, goes to the replica of e on s when there is one, unless s's
*predicted load* exceeds the balance threshold; then (and for experts with no replica on s) it goes to
the least-loaded device holding e. The prediction is the load that local-first routing would give this
batch, known from the gate's per-device counts before dispatch (the same count exchange the capacity
admission already does); devices above ``threshold × mean`` then shed their excess to other holders,
copies that arrived from elsewhere first (moving them adds no traffic), then local ones, never pushing a
receiver above the threshold. Every copy lands on a device that holds its expert.

Decisions are made on counts ``n[s, e]`` (copies on device s for expert e) and then given to tokens in
token order inside each (s, e) group: copies in one group are interchangeable.
"""

from __future__ import annotations

import numpy as np


def water_fill(levels: np.ndarray, amount: int) -> np.ndarray:
    """[m] integer amounts adding up to ``amount`` that raise the lowest of ``levels`` first (min max)."""
    levels = np.asarray(levels, dtype=np.float64)
    m = len(levels)
    if amount <= 0 or m == 0:
        return np.zeros(m, dtype=np.int64)
    order = np.argsort(levels, kind="stable")
    lv = levels[order]
    k = m
    for i in range(1, m):  # fill the i lowest bins up to lv[i]; enough?
        if i * lv[i] - lv[:i].sum() >= amount:
            k = i
            break
    h = (amount + lv[:k].sum()) / k
    alloc = np.zeros(m, dtype=np.int64)
    alloc[:k] = np.floor(h - lv[:k]).astype(np.int64)
    rest = int(amount - alloc.sum())
    if rest:  # the remainder to the bins left lowest, ties by position
        after = lv + alloc
        alloc[np.lexsort((np.arange(m), after))[:rest]] += 1
    out = np.zeros(m, dtype=np.int64)
    out[order] = alloc
    return out


def route_counts(n: np.ndarray, holders: np.ndarray, threshold: float = 1.05) -> np.ndarray:
    """[D_src, E, D_dst] copies sent from each source device to each holder of each expert.

    ``n`` [D, E] copies per source device and expert; ``holders`` [E, D] bool, True where a device holds
    the expert (primary or replica); ``threshold`` ≥ 1, the balance threshold as a factor of the mean load.
    """
    D, E = n.shape
    n = n.astype(np.int64)
    local = holders.T  # [D, E]: s holds e
    A = np.zeros((D, E, D), dtype=np.int64)
    src, exp = np.nonzero(local & (n > 0))
    A[src, exp, src] = n[src, exp]
    loads = A.sum(axis=(0, 1)).astype(np.float64)
    remote = np.where(local, 0, n)  # copies with no local holder
    single = holders.sum(axis=1) == 1  # one holder: no choice to make
    only = holders[single].argmax(axis=1)
    A[:, single, only] += remote[:, single]
    loads += np.bincount(only, weights=remote[:, single].sum(axis=0), minlength=D)
    remote[:, single] = 0
    for e in np.argsort(-remote.sum(axis=0), kind="stable"):
        total = int(remote[:, e].sum())
        if total == 0:
            continue
        targets = np.flatnonzero(holders[e])
        alloc = water_fill(loads[targets], total)
        _spread(A, e, remote[:, e], targets, alloc)
        loads[targets] += alloc
    cap = threshold * n.sum() / D
    for d in np.argsort(-loads, kind="stable"):
        if loads[d] > cap:
            _shed(A, loads, holders, int(d), cap)
    return A


def _spread(A: np.ndarray, e: int, from_src: np.ndarray, targets: np.ndarray, alloc: np.ndarray) -> None:
    """Fill ``alloc[i]`` copies for target i from the sources in order (which source goes where only
    changes traffic, not load)."""
    need = alloc.copy()
    t = 0
    for s in np.flatnonzero(from_src):
        left = int(from_src[s])
        while left:
            while need[t] == 0:
                t += 1
            take = min(left, int(need[t]))
            A[s, e, targets[t]] += take
            need[t] -= take
            left -= take


def _shed(A: np.ndarray, loads: np.ndarray, holders: np.ndarray, d: int, cap: float) -> None:
    """Move copies off device d, down to ``cap``, to other holders that stay under ``cap``."""
    D = loads.size
    # copies served on d: arrivals from other devices first, then d's own; bigger groups first
    groups = [(s != d, int(A[s, e, d]), s, e) for s, e in zip(*np.nonzero(A[:, :, d]))]
    groups.sort(key=lambda g: (not g[0], -g[1], g[2], g[3]))
    for _, _, s, e in groups:
        excess = loads[d] - cap
        if excess <= 0:
            return
        targets = np.flatnonzero(holders[e] & (np.arange(D) != d))
        room = np.maximum(np.floor(cap - loads[targets]), 0)
        amount = int(min(np.ceil(excess), A[s, e, d], room.sum()))
        if amount <= 0:
            continue
        alloc = np.minimum(water_fill(loads[targets], amount), room).astype(np.int64)
        A[s, e, targets] += alloc
        A[s, e, d] -= alloc.sum()
        loads[targets] += alloc
        loads[d] -= alloc.sum()


def route_tokens(
    expert_ids: np.ndarray, token_device: np.ndarray, holders: np.ndarray, threshold: float = 1.05
) -> np.ndarray:
    """[T, k] the device each copy goes to; ``expert_ids`` [T, k], ``token_device`` [T] where each token is."""
    E, D = holders.shape
    T, k = expert_ids.shape
    e_c = expert_ids.ravel().astype(np.int64)
    s_c = np.repeat(np.asarray(token_device, dtype=np.int64), k)
    n = np.bincount(s_c * E + e_c, minlength=D * E).reshape(D, E)
    A = route_counts(n, holders, threshold)  # [D, E, D]
    order = np.lexsort((np.arange(e_c.size), e_c, s_c))  # copies grouped by (source, expert), token order
    # copy number p (in that order) falls in cell (s, e, d) of A's flattened running total
    cell = np.searchsorted(np.cumsum(A.ravel()), np.arange(e_c.size), side="right")
    dest = np.empty(e_c.size, dtype=np.int64)
    dest[order] = cell % D
    return dest.reshape(T, k)
