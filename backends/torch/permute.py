"""Token permutation for token-choice routers, with gathers only in both directions.

Every token has k copies; copy (t, j) sits at row ``pos[t, j]`` of the permuted buffer (expert-major, or a
rank's send order), or is dropped. Autograd's own backward of ``index_select`` is an atomic scatter
(``index_add``) and the weighted combine a broadcast multiply; both were a third of the MoE layer's time on
an H200. Knowing ``pos`` turns each backward into gathers, and the k-way weighted sum into gathers with
multiply-adds — each one fused kernel on CUDA (``backends.torch.fusion``).
"""

from __future__ import annotations

import torch

from backends.torch.fusion import copy_dots, scaled_rows, weighted_row_sum


class PermuteTokens(torch.autograd.Function):
    """rows[r] = x[row_token[r]]; backward: dx[t] = Σ_j drows[pos[t, j]] over t's kept copies."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, row_token: torch.Tensor, pos: torch.Tensor, kept, fuse: bool):
        ctx.save_for_backward(pos, kept)
        ctx.fuse = fuse
        return x.index_select(0, row_token)

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor):
        pos, kept = ctx.saved_tensors
        T, k = pos.shape
        if grad_rows.shape[0] == 0:
            return grad_rows.new_zeros(T, grad_rows.shape[1]), None, None, None, None
        mask = None if kept is None else kept.view(T, k).to(grad_rows.dtype)  # None: every copy was kept
        return weighted_row_sum(grad_rows, pos, mask, fuse=ctx.fuse), None, None, None, None


class UnpermuteTokens(torch.autograd.Function):
    """y[t] = Σ_j w[t, j] · rows[pos[t, j]] (dropped copies weigh 0); backward as gathers and a bmm."""

    @staticmethod
    def forward(
        ctx,
        rows: torch.Tensor,
        weight: torch.Tensor,
        pos: torch.Tensor,
        row_token: torch.Tensor,
        row_copy: torch.Tensor,
        fuse: bool,
    ):
        T, k = pos.shape
        ctx.save_for_backward(rows, weight, pos, row_token, row_copy)
        ctx.fuse = fuse
        if rows.shape[0] == 0:
            return rows.new_zeros(T, rows.shape[1])
        return weighted_row_sum(rows, pos, weight.to(rows.dtype), fuse=fuse)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        rows, weight, pos, row_token, row_copy = ctx.saved_tensors
        T, k = pos.shape
        if rows.shape[0] == 0:
            return rows.new_zeros(rows.shape), weight.new_zeros(weight.shape), None, None, None, None
        grad_rows = scaled_rows(grad_y, row_token, weight.reshape(-1), row_copy, fuse=ctx.fuse)
        grad_w = copy_dots(rows, pos, grad_y, fuse=ctx.fuse).to(weight.dtype)
        return grad_rows, grad_w, None, None, None, None


def copy_positions(order: torch.Tensor, num_kept: int, num_copies: int) -> torch.Tensor:
    """pos [C]: the row of each copy in a buffer holding ``order[:num_kept]``; dropped copies get row 0
    (their weight is zeroed by the caller)."""
    pos = torch.zeros(num_copies, dtype=torch.long, device=order.device)
    pos[order[:num_kept]] = torch.arange(num_kept, device=order.device)
    return pos
