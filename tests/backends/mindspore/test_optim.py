"""MindSpore's AdamW (``backends.mindspore.optim``: torch's rule on the fused ``ops.AdamWeightDecay`` kernel, its
bias correction and decoupled decay folded into the kernel's coefficients) against that rule written out in
float64 numpy, over steps with a changing learning rate (a zero one included), with decay and without, in
PyNative and inside the compiled step's update graph. Tolerance: 2e-6 relative (float32 arithmetic)."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor

from backends.mindspore.optim import AdamW
from backends.mindspore.train_step import adamw_update, squared_norms
from locmoe.config.schema import TrainConfig

LRS = [1e-3, 3e-3, 0.0, 2e-3, 5e-4, 1e-2]
T = TrainConfig(weight_decay=0.1, beta1=0.9, beta2=0.95)


def reference(p, grads, lrs, decayed, max_norm=0.0):
    """torch.optim.AdamW's step (and clip_grad_norm over the one tensor), float64."""
    w, m, v = p.astype(np.float64), np.zeros(p.shape), np.zeros(p.shape)
    b1, b2 = T.beta1, T.beta2
    for step, (g, lr) in enumerate(zip(grads, lrs), start=1):
        norm = np.sqrt((g.astype(np.float64) ** 2).sum())
        g = g * (max_norm / (norm + 1e-6)) if 0 < max_norm < norm else g.astype(np.float64)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w * (1 - lr * T.weight_decay) if decayed else w
        w = w - lr / (1 - b1**step) * m / (np.sqrt(v) / np.sqrt(1 - b2**step) + 1e-8)
    return w, m, v


def problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32), [
        (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 0)).astype(np.float32) for _ in LRS
    ]


@pytest.mark.parametrize("shape", [(16, 8), (8,)], ids=["matrix, decayed", "vector, not decayed"])
def test_the_pynative_step_is_torchs_adamw(shape):
    p0, grads = problem(shape)
    opt = AdamW({"w": Parameter(Tensor(p0), name="w")}, T)
    for g, lr in zip(grads, LRS):
        opt.lr = lr
        opt.step({"w": Tensor(g)})
    w, m, v = reference(p0, grads, LRS, decayed=len(shape) == 2)
    np.testing.assert_allclose(opt.params["w"].asnumpy(), w, rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(opt.exp_avg["w"].asnumpy(), m, rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(opt.exp_avg_sq["w"].asnumpy(), v, rtol=2e-6, atol=1e-15)


@pytest.mark.parametrize("max_norm", [0.0, 1e-3], ids=["no clip", "clipped"])
def test_the_compiled_update_is_torchs_adamw_after_the_clip(max_norm):
    shapes = [(16, 8), (8,)]
    starts, gradients = zip(*(problem(s, seed=i) for i, s in enumerate(shapes)))
    params = {f"w{i}": Parameter(Tensor(p), name=f"w{i}") for i, p in enumerate(starts)}
    opt = AdamW(params, T)
    names = list(params)
    norms = squared_norms((False, False))
    update = adamw_update(tuple(opt.decay[n] > 0 for n in names), opt.betas, max_norm)
    for step, lr in enumerate(LRS):
        opt.lr, opt.step_count = lr, opt.step_count + 1
        grads = [Tensor(gradients[i][step]) for i in range(len(shapes))]
        dense_sq, expert_sq = norms(*grads)
        coefficients = [Tensor(c, ms.float32) for c in opt.coefficients()]
        update(
            dense_sq,
            expert_sq,
            *coefficients,
            *params.values(),
            *grads,
            *opt.exp_avg.values(),
            *opt.exp_avg_sq.values(),
        )
    # the clip scales by the norm over both tensors: the reference clips their concatenation
    flat = reference(
        np.concatenate([p.reshape(-1) for p in starts]),
        [np.concatenate([g[s].reshape(-1) for g in gradients]) for s in range(len(LRS))],
        LRS,
        decayed=True,
        max_norm=max_norm,
    )[0]
    matrix = flat[: starts[0].size].reshape(shapes[0])
    np.testing.assert_allclose(params["w0"].asnumpy(), matrix, rtol=2e-6, atol=1e-9)
