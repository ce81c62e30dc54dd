"""The language-model loss of the MindSpore backend: mean cross-entropy of logits [N, V] against targets [N].

``ops.cross_entropy`` differentiates its log-softmax and its one-hot NLL op by op; on CPU the backward alone was
~19 ms of the tiny model's compiled step (a one-hot Equal over [2048, 256], a Tile of the same size and their
AddN, 3.6-5.3 ms each, profiled) against ~1 ms for the same loss in torch. Written out, the loss is
logsumexp(l) - l[target]: the row sum a matmul with a ones column and the max's broadcast an outer product with
a ones row (BLAS; neither leaves a CPU reduction or a broadcast for autodiff), the target's logit one
GatherD, whose gradient is one scatter. The max only keeps exp in range (no gradient: the shift cancels).
"""

from __future__ import annotations

import functools

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops


@functools.lru_cache(maxsize=8)
def _ones(shape: tuple) -> Tensor:
    return Tensor(np.ones(shape, np.float32))


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the N rows of -log softmax(logits)[target]; logits float32 [N, V], targets int [N]."""
    N, V = logits.shape
    shift = ops.matmul(ops.stop_gradient(ops.amax(logits, -1, keepdims=True)), _ones((1, V)))  # [N, V]
    shifted = logits - shift
    total = ops.matmul(ops.exp(shifted), _ones((V, 1)))  # [N, 1] Σ_v exp(l_v - max)
    picked = ops.gather_elements(shifted, 1, targets.astype(ms.int64).reshape(N, 1))
    return (ops.log(total) - picked).mean()
