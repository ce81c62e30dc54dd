"""The experts of one rank: a SwiGLU or GeLU FFN each, over tokens sorted by expert.

On Ascend one grouped matmul (``gmm``, the GroupedMatmul kernel, Ascend-only) multiplies each expert's
contiguous slice of rows by that expert's weight. Elsewhere a per-expert loop does the same: it is kept
beside the grouped path for comparison and readability, as in the torch backend.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer


def grouped_mm_supported(x: Tensor) -> bool:
    """The GroupedMatmul kernel runs on Ascend only (float16/bfloat16/float32 rows)."""
    return ms.get_context("device_target") == "Ascend" and x.dtype in (ms.float16, ms.bfloat16, ms.float32)


class GroupedExperts(nn.Cell):
    """``num_local`` experts. Parameters (the checkpoint contract, as in the torch backend):
    w1 [num_local, d, f], w2 [num_local, f, d], and for SwiGLU w3 [num_local, d, f]."""

    def __init__(self, num_local: int, d_model: int, d_expert: int, activation: str = "swiglu", impl: str = "auto"):
        super().__init__()
        self.activation, self.impl = activation, impl
        zeros = lambda *shape: Tensor(np.zeros(shape, np.float32))  # noqa: E731
        self.w1 = Parameter(zeros(num_local, d_model, d_expert), name="w1")
        self.w2 = Parameter(zeros(num_local, d_expert, d_model), name="w2")
        self.w3 = Parameter(zeros(num_local, d_model, d_expert), name="w3") if activation == "swiglu" else None

    def reset_parameters(self, std: float, out_std: float | None = None) -> None:
        for w in (self.w1, self.w3):
            if w is not None:
                w.set_data(initializer(Normal(std), w.shape, w.dtype))
        self.w2.set_data(initializer(Normal(std if out_std is None else out_std), self.w2.shape, self.w2.dtype))

    def construct(self, x: Tensor, counts: Tensor | list, dropped_tail: bool = False) -> Tensor:
        """x: [M, d] rows sorted by local expert; counts: [num_local] rows per expert.

        ``counts`` sums to M, or with ``dropped_tail`` to at most M: the rows after the last expert's are
        dropped copies, whose output is zero."""
        counts = [int(c) for c in (counts.asnumpy() if isinstance(counts, Tensor) else counts)]
        if self.impl == "grouped" and not grouped_mm_supported(x):
            raise RuntimeError(
                f"moe.expert_impl = 'grouped', but GroupedMatmul does not run for {x.dtype} on "
                f"{ms.get_context('device_target')} (Ascend only); use auto or loop"
            )
        use_grouped = self.impl == "grouped" or (self.impl == "auto" and grouped_mm_supported(x))
        kept = sum(counts)
        rows = x[:kept] if dropped_tail and kept < x.shape[0] else x
        y = self._grouped(rows, counts) if use_grouped else self._loop(rows, counts)
        if rows is x:
            return y
        return ops.cat([y, ops.zeros((x.shape[0] - kept, y.shape[1]), y.dtype)])

    def fixed(self, x: Tensor, size: int) -> Tensor:
        """x: [num_local * size, d], ``size`` rows per expert (``moe.dispatch_shape: static``): one batched
        matmul of fixed shape per projection (BatchMatMul: graph mode and Ascend want no dynamic shape)."""
        y = self._ffn(lambda a, w: ops.bmm(a, w.astype(a.dtype)), x.reshape(self.w1.shape[0], size, x.shape[-1]))
        return y.reshape(-1, y.shape[-1])

    def _ffn(self, mm, x: Tensor) -> Tensor:
        h = mm(x, self.w1)
        h = ops.silu(h) * mm(x, self.w3) if self.activation == "swiglu" else ops.gelu(h, approximate="none")
        return mm(h, self.w2)

    def _grouped(self, x: Tensor, counts: list) -> Tensor:
        # Ascend only, so not exercised by the CPU tests; gmm differentiates itself for group_type 0
        from mindspore.ops.function.math_func import gmm

        sizes = Tensor(np.asarray(counts, dtype=np.int64))
        return self._ffn(
            lambda a, w: gmm((a,), (w.astype(a.dtype),), group_list=sizes, group_type=0, group_list_type=1)[0], x
        )

    def _loop(self, x: Tensor, counts: list) -> Tensor:
        bounds = np.cumsum([0, *counts]).tolist()
        outs = [
            self._ffn(lambda a, w, e=e: ops.matmul(a, w[e].astype(a.dtype)), x[bounds[e] : bounds[e + 1]])
            for e in range(len(counts))
            if counts[e]
        ]
        if not outs:
            # no rows: an empty output that still depends on x, so the backward all-to-all that brought x
            # runs on this rank too (the other ranks wait for it)
            return x * 0
        return outs[0] if len(outs) == 1 else ops.cat(outs)
