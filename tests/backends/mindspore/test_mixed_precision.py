"""Mixed precision in the MindSpore model: float32 parameters and optimiser, activations in the compute dtype
(``train.dtype: bfloat16`` on Ascend; the router in float32, the experts in the compute dtype). CPU has no
bfloat16 matmul, so the path is checked with float16, which it has: the same model and batch give the float32
loss within 1e-3 relative and each gradient within 3 % of its norm (measured 2e-6 and 0.7 %: float16's 11-bit
mantissa over two blocks), and a bfloat16 job on CPU is refused before it starts.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from backends.mindspore import train as ms_train
from backends.mindspore.distributed import expert_parallel, init_distributed
from backends.mindspore.moe_layer import MoELayer
from backends.mindspore.optim import make_optimizer
from backends.mindspore.train_step import Step
from locmoe.config import ConfigError, load_config
from models.pangu_sigma_mindspore import PanGuSigma
from tests.backends.mindspore.test_model_jit import SMALL as SETS


def loss_and_grads(dtype):
    cfg = load_config(overrides=SETS)
    ctx = init_distributed(cfg.parallel)
    model = PanGuSigma(cfg, expert_parallel(ctx, cfg.parallel, cfg.moe.num_experts), MoELayer, compute_dtype=dtype)
    model.reset_parameters(cfg.train.seed)
    model.set_train(True)
    tokens = np.random.default_rng(0).integers(0, 256, (8, 17))
    x = Tensor(tokens[:, :-1])
    logits = model(x, Tensor(np.zeros(8, np.int64)))[0]
    lm, _, _, grads = Step(model, make_optimizer(model, cfg.train), 1)(
        x, Tensor(tokens[:, 1:]), Tensor(np.zeros(8, np.int64))
    )
    return logits.dtype, float(lm.asnumpy()), {n: g.asnumpy() for n, g in grads.items()}, model


def test_float16_activations_give_the_float32_loss_and_gradients():
    dtype, loss, grads, model = loss_and_grads(ms.float16)
    _, loss_ref, grads_ref, _ = loss_and_grads(ms.float32)
    assert dtype == ms.float16  # the activations really ran in float16
    assert all(p.dtype == ms.float32 for p in model.trainable_params())
    assert abs(loss - loss_ref) <= 1e-3 * abs(loss_ref)
    for name, g in grads_ref.items():
        assert grads[name].dtype == np.float32, name
        assert np.linalg.norm(grads[name] - g) <= 0.03 * np.linalg.norm(g) + 1e-6, name


def test_bfloat16_on_cpu_is_refused_naming_the_field(tmp_path):
    cfg = load_config(overrides=[*SETS, "train.dtype=bfloat16", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError) as err:
        ms_train.prepare(cfg, resume=False)
    assert err.value.field == "train.dtype" and "allowed on CPU: float32" in str(err.value)
    assert not (tmp_path / "run").exists()
