"""The experts of one rank: a SwiGLU or GeLU FFN each, run as one grouped GEMM over expert-sorted tokens.

``torch.nn.functional.grouped_mm`` (torch ≥ 2.9; CUDA bf16 on SM ≥ 80, fp32 on CPU) multiplies each
expert's contiguous slice of rows by that expert's weight in one call. The per-expert loop is kept beside
it for comparison, for dtypes the grouped kernel lacks, and for readability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from backends.torch.fusion import fused, swiglu

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """grouped_mm runs on CUDA in bf16 and on CPU in fp32/bf16; its rows must be 16-byte aligned."""
    if _grouped_mm is None:
        return False
    if x.device.type == "cuda":
        ok_dtype = x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 8
    else:
        ok_dtype = x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
    return ok_dtype and (x.shape[-1] * x.element_size()) % 16 == 0


class GroupedExperts(nn.Module):
    """``num_local`` experts. Parameters (the checkpoint contract):
    w1 [num_local, d, f], w2 [num_local, f, d], and for SwiGLU w3 [num_local, d, f]."""

    def __init__(
        self,
        num_local: int,
        d_model: int,
        d_expert: int,
        activation: str = "swiglu",
        impl: str = "auto",
        fuse: bool = True,
    ):
        super().__init__()
        self.activation, self.impl, self.fuse = activation, impl, fuse  # fuse: moe.fuse_kernels
        self.w1 = nn.Parameter(torch.empty(num_local, d_model, d_expert))
        self.w2 = nn.Parameter(torch.empty(num_local, d_expert, d_model))
        self.w3 = nn.Parameter(torch.empty(num_local, d_model, d_expert)) if activation == "swiglu" else None
        self.recompute = False  # activation checkpointing: keep the input rows, recompute in the backward

    def reset_parameters(self, std: float, out_std: float | None = None) -> None:
        for w in (self.w1, self.w3):
            if w is not None:
                nn.init.normal_(w, 0.0, std)
        nn.init.normal_(self.w2, 0.0, std if out_std is None else out_std)

    def forward(self, x: torch.Tensor, counts: torch.Tensor, dropped_tail: bool = False) -> torch.Tensor:
        """x: [M, d] rows sorted by local expert; counts: [num_local] rows per expert.

        ``counts`` sums to M, or with ``dropped_tail`` to at most M: the rows after the last expert's are
        dropped copies, whose output is zero (and so is their gradient)."""
        use_grouped = self.impl == "grouped" or (self.impl == "auto" and grouped_mm_supported(x))
        if self.impl == "grouped" and not grouped_mm_supported(x):
            raise RuntimeError(
                f"moe.expert_impl = 'grouped', but grouped_mm does not run for {x.dtype} on "
                f"{x.device.type} with hidden size {x.shape[-1]}; use auto or loop"
            )
        run = self._grouped if use_grouped else self._loop
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(run, x, counts, dropped_tail, use_reentrant=False)
        return run(x, counts, dropped_tail)

    def fixed(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """x: [num_local * size, d], ``size`` rows per expert (``moe.dispatch_shape: static``): one batched GEMM
        of fixed shape per projection."""
        run = self._batched
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(run, x, size, use_reentrant=False)
        return run(x, size)

    def _batched(self, x: torch.Tensor, size: int) -> torch.Tensor:
        y = self._ffn(lambda a, w: torch.bmm(a, w.to(a.dtype)), x.view(self.w1.shape[0], size, x.shape[-1]))
        return y.reshape(-1, y.shape[-1])

    def _ffn(self, mm, x):
        h = mm(x, self.w1)
        h = swiglu(h, mm(x, self.w3), fuse=self.fuse) if self.activation == "swiglu" else F.gelu(h)
        return mm(h, self.w2)

    def _grouped(self, x: torch.Tensor, counts: torch.Tensor, dropped_tail: bool) -> torch.Tensor:
        # NOTE: offsets stay on the device, so no host sync is needed here. The dropped tail is one more
        # group whose weights are zero: its rows come out exactly 0 and pass back a zero gradient, without
        # the host knowing how many rows it holds.
        if dropped_tail:
            counts = torch.cat([counts, (x.shape[0] - counts.sum()).view(1)])
        offs = torch.cumsum(counts, 0).to(torch.int32)
        grouped_mm = _grouped_mm
        assert grouped_mm is not None  # this path runs only where grouped_mm_supported()

        def mm(a, w):
            return _ContiguousGrad.apply(grouped_mm(a, w, offs=offs))

        if self.activation != "swiglu":
            return mm(
                F.gelu(mm(x, _as_group_weight(self.w1, x.dtype, dropped_tail))),
                _as_group_weight(self.w2, x.dtype, dropped_tail),
            )
        # SwiGLU's gate and up projections as one GEMM of twice the width (one read of x, one launch, and a
        # larger N per group), their weights cast and stacked in the same pass
        w13, w2 = _swiglu_group_weights(self.w1, self.w3, self.w2, x.dtype, dropped_tail, fuse=self.fuse)
        f = self.w1.shape[-1]
        h13 = mm(x, w13)
        return mm(swiglu(h13[:, :f], h13[:, f:], fuse=self.fuse), w2)

    def _loop(self, x: torch.Tensor, counts: torch.Tensor, dropped_tail: bool) -> torch.Tensor:
        # NOTE: the row ranges are read on the host (a sync on an accelerator); grouped_mm needs none
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        outs = []
        for e in range(len(counts)):
            rows = x[bounds[e] : bounds[e + 1]]
            outs.append(self._ffn(lambda a, w: a @ w[e].to(a.dtype), rows))
        if dropped_tail:
            outs.append(x.new_zeros(x.shape[0] - bounds[-1], self.w2.shape[-1]))
        return torch.cat(outs) if outs else x.new_zeros(0, self.w2.shape[-1])


def _as_group_weight(w: torch.Tensor, dtype: torch.dtype, zero_tail: bool) -> torch.Tensor:
    """[E, K, N] in the GEMM dtype, with one all-zero expert appended for the dropped tail."""
    w = w.to(dtype)
    return torch.cat([w, w.new_zeros(1, *w.shape[1:])]) if zero_tail else w


@fused
def _swiglu_group_weights(w1, w3, w2, dtype, zero_tail):
    """(w1 | w3 stacked along N, w2), cast and zero-tailed: one fused pass per output on CUDA."""
    return (_as_group_weight(torch.cat([w1, w3], dim=-1), dtype, zero_tail), _as_group_weight(w2, dtype, zero_tail))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects
    broadcast (stride-0) gradients such as the one ``out.sum().backward()`` produces."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def expert_flops(rows: int, d_model: int, d_expert: int, activation: str) -> float:
    """Forward FLOPs of the expert FFNs over ``rows`` routed copies (2 per multiply-add)."""
    mats = 3 if activation == "swiglu" else 2
    return 2.0 * rows * d_model * d_expert * mats
