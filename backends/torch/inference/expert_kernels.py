"""The two expert kernels serving chooses between (EPS-MoE): the grouped GEMM of ``GroupedExperts`` over
expert-sorted rows, and a padded dense batched GEMM — every local expert's rows copied into one
[E_local, max_load, d] block and multiplied by ``torch.bmm``. Padding rows are zeros, and an FFN maps a
zero row to a zero row (no biases), so they are simply dropped afterwards.
"""

from __future__ import annotations

import numpy as np
import torch

from backends.torch.experts import GroupedExperts, grouped_mm_supported


def padded_slots(loads: np.ndarray) -> tuple[np.ndarray, int]:
    """slot [M] of each expert-sorted row in the padded [E_local * cap] buffer, and cap (the largest load)."""
    loads = np.asarray(loads, dtype=np.int64)
    cap = int(loads.max()) if loads.size else 0
    expert = np.repeat(np.arange(loads.size), loads)
    starts = np.cumsum(loads) - loads
    return expert * cap + (np.arange(expert.size) - starts[expert]), cap


def dense_experts(experts: GroupedExperts, x: torch.Tensor, loads: np.ndarray) -> torch.Tensor:
    """x: [M, d] rows sorted by local expert, ``loads`` [E_local] on the host -> [M, d]."""
    slots, cap = padded_slots(loads)
    E, d = len(loads), x.shape[1]
    idx = torch.from_numpy(slots).to(x.device, non_blocking=True)
    block = x.new_zeros(E * cap, d).index_copy_(0, idx, x).view(E, cap, d)
    y = experts._ffn(lambda a, w: torch.bmm(a, w.to(a.dtype)), block)  # [E, cap, d]
    return y.view(E * cap, d).index_select(0, idx)


def run_experts(
    experts: GroupedExperts, x: torch.Tensor, counts: torch.Tensor, loads: np.ndarray, kernel: str
) -> tuple[torch.Tensor, str]:
    """Apply the local experts with ``kernel`` ("grouped" or "dense"); returns (rows, the kernel that ran:
    grouped falls back to the per-expert loop where grouped_mm does not run, e.g. fp32 on CUDA)."""
    if x.shape[0] == 0:
        return x.new_zeros(0, experts.w2.shape[-1]), kernel
    if kernel == "dense":
        return dense_experts(experts, x, loads), "dense"
    # the experts' own forward picks grouped_mm where it runs (serving builds them with impl auto)
    ran = "grouped" if grouped_mm_supported(x) and experts.impl != "loop" else "loop"
    return experts(x, counts), ran
