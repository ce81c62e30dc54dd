"""``moe.dispatch_shape: static`` with expert parallelism: every all-to-all block has a fixed size.

Admission is group-wide, so an expert admits at most ``S`` copies (its buffer) from all ranks together, and
each rank's copies to it are at most ``S``. Each rank therefore sends every (destination, local expert) block
as ``S`` rows — its copies first, zero rows after — and the exchange has the same split sizes every step and
on every rank (no count reaches the host). The receiver packs each local expert's rows from all sources into
its ``S`` slots (source 0's first), runs the experts on [local experts, S, d], and the way back is the mirror.
Every index is computed on the device from the counts, which one small all-gather shares. The price: each
block travels padded to ``S`` rows (the traffic counter counts what travels).
"""

from __future__ import annotations

from typing import Callable

from locmoe.moe.records import Tensor
from locmoe.moe.surface import MoEOps


class StaticExchange:
    def __init__(
        self, ops: MoEOps, exchange, send_index: Tensor, recv_index: Tensor, return_index: Tensor, back_index: Tensor
    ):
        self.ops, self.exchange = ops, exchange
        self.send_index, self.recv_index = send_index, recv_index  # sorted rows -> blocks -> slots
        self.return_index, self.back_index = return_index, back_index  # slots -> blocks -> sorted rows

    def dispatch(self, rows: Tensor) -> Callable[[], Tensor]:
        """rows: this rank's copies in send order (kept first) -> finish() -> [local experts * S] slots."""
        ops = self.ops
        finish = self.exchange.dispatch(ops.take_rows(ops.pad_row(rows), self.send_index))
        return lambda: ops.take_rows(ops.pad_row(finish()), self.recv_index)

    def combine(self, y: Tensor) -> Callable[[], Tensor]:
        """y: the experts' [local experts * S] slots -> finish() -> rows in send order (dropped copies 0)."""
        ops = self.ops
        finish = self.exchange.combine(ops.take_rows(ops.pad_row(y), self.return_index))
        return lambda: ops.take_rows(ops.pad_row(finish()), self.back_index)


def static_indices(
    ops: MoEOps, sorted_key: Tensor, counts: Tensor, received: Tensor, size: int, like: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(send, recv, return, back) gather indices.

    ``sorted_key`` [C]: each copy's block (destination · local experts + slot) in send order, kept copies
    first; ``counts`` [W · El] this rank's kept copies per block; ``received`` [W src, El] the copies each
    source sends to each of this rank's experts; ``size`` S. Out-of-range rows point at the zero row each
    gather appends."""
    W, El = received.shape
    B, C, S = W * El, sorted_key.shape[0], size
    start = ops.cumsum(counts) - counts  # [B] first sorted row of block
    i = ops.arange(B * S, like=like)
    b, p = i // S, i % S
    send = ops.where(p < ops.take(counts, b), ops.take(start, b) + p, ops.full_like(i, C))
    r = ops.arange(C, like=like)
    kept_rows = r < ops.sum(counts)
    block = ops.where(kept_rows, sorted_key, ops.zeros_like(sorted_key))
    back = ops.where(kept_rows, block * S + r - ops.take(start, block), ops.full_like(r, B * S))
    ends = ops.cumsum(received)  # [W, El] over sources
    offset = ends - received  # slot of a source's first row
    j = ops.arange(El * S, like=like)
    e, q = j // S, j % S
    ends_e = ops.take_rows(ops.transpose(ends), e)  # [El*S, W]
    src = ops.count_true(q[:, None] >= ends_e)  # sources filled before slot q
    valid = src < W
    src_safe = ops.where(valid, src, ops.zeros_like(src))
    first = ops.take_along_rows(ops.take_rows(ops.transpose(offset), e), src_safe[:, None]).reshape(-1)
    recv = ops.where(valid, (src_safe * El + e) * S + q - first, ops.full_like(j, B * S))
    k = ops.arange(B * S, like=like)
    kb, kp = k // S, k % S  # receive block src · El + e, its row
    ke = kb % El
    n = ops.take(received.reshape(-1), kb)
    ret = ops.where(kp < n, ke * S + ops.take(offset.reshape(-1), kb) + kp, ops.full_like(k, El * S))
    return send, recv, ret, back
