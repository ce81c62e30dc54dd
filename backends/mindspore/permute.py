"""Token permutation for token-choice routers: gathers in both directions.

Every token has k copies; copy (t, j) sits at row ``pos[t, j]`` of the permuted buffer (a rank's send order,
or expert-major in one process), or is dropped. The combine y[t] = Σ_j w[t, j] · rows[pos[t, j]] sums each
token's copies in choice order, so the expert-parallel run and the one-process run add the same numbers in
the same order (bit-identical outputs). Unlike the torch backend there is no hand-written backward: MindSpore
differentiates the gathers itself, and on CPU a scatter-add costs no atomics.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

from backends.mindspore.routing_ops import inverse_permutation


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[index] along dim 0, differentiable. A rank can receive no rows; then the index is empty too and x
    itself is returned: MindSpore's gather gradient rejects a source of zero rows (UnsortedSegmentSum with
    0 segments), and x must stay in the graph so that the backward all-to-all that produced it still runs."""
    if x.shape[0] == 0:
        return x
    return ops.gather(x, index, 0)


def copy_positions(order: Tensor, num_kept: int) -> Tensor:
    """pos [C]: the row of each copy in a buffer holding ``order[:num_kept]`` (``order`` lists all C copies).

    Dropped copies point at row ``num_kept``, the zero row :func:`unpermute_tokens` appends: they add nothing,
    and the returned rows stay in the graph even when a rank keeps no copy (every rank must then still run
    the combine's backward all-to-all).
    """
    inverse = inverse_permutation(order)  # place of each copy in ``order``
    return ops.where(inverse < num_kept, inverse, num_kept)


def unpermute_tokens(rows: Tensor, weight: Tensor, pos: Tensor) -> Tensor:
    """y [T, d] = Σ_j weight[t, j] · rows[pos[t, j]]; rows [M, d], weight and pos [T, k]."""
    T, k = pos.shape
    padded = ops.cat([rows, ops.zeros((1, rows.shape[1]), rows.dtype)])  # row M: dropped copies
    pos_by_choice = pos.astype(ms.int64).T  # [k, T]: slicing the small index, not the gathered rows
    w = weight.astype(rows.dtype)
    # the k terms added in choice order, as a sum over that axis adds them. Each choice gathers its own rows:
    # k gathers of [T, d] cost what one of [T·k, d] did, where the [T, k, d] gather's middle-axis sum took
    # 3.7-5.6 ms per layer and its middle-axis slices [:, j] 14-15 ms each (CPU StridedSlice, compiled, profiled)
    y = w[:, 0:1] * ops.gather(padded, pos_by_choice[0], 0)
    for j in range(1, k):
        y = y + w[:, j : j + 1] * ops.gather(padded, pos_by_choice[j], 0)
    return y
