"""The experts of one rank: a SwiGLU or GeLU FFN each, run as one grouped GEMM over expert-sorted tokens.

``torch.nn.functional.grouped_mm`` (torch ≥ 2.9; CUDA bf16 on SM ≥ 80, fp32 on CPU) multiplies each
expert's contiguous slice of rows by that expert's weight in one call. The per-expert loop is kept beside
it for comparison, for dtypes the grouped kernel lacks, and for readability.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from backends.torch.fusion import swiglu

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

    def __init__(self, num_local: int, d_model: int, d_expert: int, activation: str = "swiglu",
                 impl: str = "auto"):
        super().__init__()
        self.activation, self.impl = activation, impl
        self.w1 = nn.Parameter(torch.empty(num_local, d_model, d_expert))
        self.w2 = nn.Parameter(torch.empty(num_local, d_expert, d_model))
        self.w3 = nn.Parameter(torch.empty(num_local, d_model, d_expert)) if activation == "swiglu" else None

    def reset_parameters(self, std: float, out_std: float | None = None) -> None:
        for w in (self.w1, self.w3):
            if w is not None:
                nn.init.normal_(w, 0.0, std)
        nn.init.normal_(self.w2, 0.0, std if out_std is None else out_std)

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x: [M, d] rows sorted by local expert; counts: [num_local] rows per expert (sums to M)."""
        use_grouped = self.impl == "grouped" or (self.impl == "auto" and grouped_mm_supported(x))
        if self.impl == "grouped" and not grouped_mm_supported(x):
            raise RuntimeError(f"moe.expert_impl = 'grouped', but grouped_mm does not run for {x.dtype} on "
                               f"{x.device.type} with hidden size {x.shape[-1]}; use auto or loop")
        return self._grouped(x, counts) if use_grouped else self._loop(x, counts)

    def _ffn(self, mm, x):
        h = mm(x, self.w1)
        h = swiglu(h, mm(x, self.w3)) if self.activation == "swiglu" else F.gelu(h)
        return mm(h, self.w2)

    def _grouped(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        # NOTE: offsets stay on the device, so no host sync is needed here.
        offs = torch.cumsum(counts, 0).to(torch.int32)
        w_dtype = x.dtype

        def mm(a, w):
            return _ContiguousGrad.apply(_grouped_mm(a, w.to(w_dtype), offs=offs))
        return self._ffn(mm, x)

    def _loop(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        bounds = [0, *torch.cumsum(counts, 0).tolist()]
        outs = []
        for e in range(len(counts)):
            rows = x[bounds[e]:bounds[e + 1]]
            outs.append(self._ffn(lambda a, w: a @ w[e].to(a.dtype), rows))
        return torch.cat(outs) if outs else x.new_zeros(0, self.w2.shape[-1])


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


def init_std_for_output(init_std: float, num_layers: int) -> float:
    """GPT-2 style: the output projection's init shrinks with depth so the residual stream stays bounded."""
    return init_std / math.sqrt(2 * max(num_layers, 1))
