"""The MindSpore LM loss (``backends.mindspore.lm_loss``) against float64 numpy: value and gradient, in
PyNative and in a traced graph, with large logits (the max shift keeps exp in range)."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from backends.mindspore.distributed import setup_runtime
from backends.mindspore.lm_loss import cross_entropy
from backends.mindspore.trace_capture import trace

setup_runtime("CPU")


def reference(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    z = logits.astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    rows = np.arange(len(targets))
    grad = np.exp(z - lse[:, None])
    grad[rows, targets] -= 1
    return float((lse - z[rows, targets]).mean()), grad / len(targets)


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("scale", [1.0, 50.0])  # 50: exp of the raw logits would overflow float32
def test_cross_entropy_value_and_gradient(traced, scale):
    rng = np.random.default_rng(int(scale))
    logits = (rng.standard_normal((96, 40)) * scale).astype(np.float32)
    targets = rng.integers(0, 40, 96).astype(np.int32)
    fn = trace(cross_entropy) if traced else cross_entropy
    value, grad = ms.value_and_grad(fn, 0)(Tensor(logits), Tensor(targets))
    want, want_grad = reference(logits, targets)
    assert float(value.asnumpy()) == pytest.approx(want, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(grad.asnumpy(), want_grad, rtol=0, atol=1e-7)
