"""``parallel.jit`` compiles the dense blocks of the MindSpore model: same loss and same gradients as PyNative.

Guards a measured pitfall: bytecode capture of a Cell method ran but returned zero gradients for the Cell's
own parameters. Tolerance 1e-6 absolute (the compiled graph runs the same fp32 kernels; measured equal).
"""

import numpy as np
from mindspore import Tensor

from backends.mindspore.distributed import init_distributed
from backends.mindspore.optim import make_optimizer
from backends.mindspore.train import build_model
from backends.mindspore.train_step import Step
from locmoe.config import load_config

SMALL = [  # a small MindSpore model, one process emulating 2 nodes x 2
    "parallel.backend=mindspore",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.d_ff=64",
    "moe.d_expert=32",
    "parallel.nodes=2",
    "parallel.devices_per_node=2",
]


def loss_and_grads(jit: bool):
    cfg = load_config(overrides=[*SMALL, f"parallel.jit={str(jit).lower()}"])
    model = build_model(cfg, init_distributed(cfg.parallel))
    tokens = np.random.default_rng(0).integers(0, 256, (8, 17))
    lm, _, _, grads = Step(model, make_optimizer(model, cfg.train), 1)(
        Tensor(tokens[:, :-1]), Tensor(tokens[:, 1:]), Tensor(np.zeros(8, np.int64))
    )
    return float(lm.asnumpy()), {n: g.asnumpy() for n, g in grads.items()}


def test_jit_gives_the_pynative_loss_and_gradients():
    (a, ga), (b, gb) = loss_and_grads(False), loss_and_grads(True)
    assert abs(a - b) <= 1e-6
    assert sorted(ga) == sorted(gb)
    for name in ga:
        assert np.abs(gb[name]).max() > 0, f"{name}: no gradient under jit"
        np.testing.assert_allclose(gb[name], ga[name], rtol=0, atol=1e-6, err_msg=name)
