"""``parallel.jit_step``: the MindSpore training step compiled, MoE layers included, against the same run op by
op (PyNative): one process emulating 2 nodes x 2 devices, and 4 msrun workers as 2 nodes x 2 (the all-to-all of
the static blocks through the CPU adapter, inside the traced graph); and against torch.

Tolerance 1e-5 on each of 20 steps' loss (measured ≤ 3e-7 in one process: the compiled gradient differs from
PyNative's in the last bit, as a graph's autodiff orders its sums its own way). At the tiny config's lr 3e-3
the same 1e-7 grows past 1e-5 after a dozen steps, where a dropped copy flips; lr 1e-3 keeps it small.
"""

import pytest

from locmoe.config import ConfigError, load_config
from tests.training.runs import losses, train
from tests.training.test_train_mindspore import MS, TORCH

STATIC = [*MS, "moe.dispatch_shape=static", "train.ckpt_every=0"]
COMPILED = [*STATIC, "parallel.jit_step=true"]
TOL = 1e-5


@pytest.mark.parametrize("nproc", [1, 4], ids=["one process", "msrun 4 workers"])
def test_compiled_step_equals_pynative(tmp_path, shared_run, nproc):
    launch = dict(nproc=nproc, launcher="msrun")
    train(tmp_path / "eager", *STATIC, "parallel.jit_step=false", **launch)
    compiled = shared_run(*COMPILED, **launch)  # the one-process run is also test_compiled_step_equals_torch's
    a, b = losses(tmp_path / "eager"), losses(compiled)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) <= TOL, {s: (a[s], b[s]) for s in a}
    assert losses(compiled, "dropped_fraction") == pytest.approx(losses(tmp_path / "eager", "dropped_fraction"))


def test_compiled_step_equals_torch(shared_run):
    """The compiled MindSpore run against torch's (dynamic dispatch, eager) within the 1e-4 of
    ``test_mindspore_training_equals_torch``: static dispatch drops the copies dynamic dispatch drops."""
    a, b = losses(shared_run(*COMPILED)), losses(shared_run(*TORCH))
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4, {s: (a[s], b[s]) for s in a}


@pytest.mark.parametrize(
    "sets, says",
    [
        (["moe.dispatch_shape=dynamic"], "needs moe.dispatch_shape static"),
        (["moe.capacity.mode=bound"], "needs moe.capacity.mode factor, not bound"),
        (["moe.router.kind=gshard", "moe.router.gate=dense", "moe.router.bias_update_rate=0.001"], "selection bias"),
        (["parallel.backend=torch"], "is a MindSpore field"),
    ],
)
def test_what_a_compiled_step_cannot_hold_is_refused(sets, says):
    base = ["parallel.backend=mindspore", "moe.dispatch_shape=static", "parallel.jit_step=true"]
    with pytest.raises(ConfigError) as err:
        load_config("tiny_cpu", [*base, *sets])
    assert err.value.field == "parallel.jit_step" and says in str(err.value)


def test_compiled_step_reports_non_finite_activations_by_layer(tmp_path):
    """The layers' NaN/Inf counts come out of the compiled step as one tensor: NaN input activations (a NaN
    embedding) stop the step with the first MoE layer named, as in PyNative."""
    import numpy as np
    from mindspore import Tensor

    from backends.mindspore.optim import make_optimizer
    from backends.mindspore.train import build_model, prepare
    from backends.mindspore.train_step import CompiledStep
    from locmoe.training.finite import NonFiniteError

    cfg = load_config("tiny_cpu", [*STATIC, "parallel.jit_step=true", f"train.out_dir={tmp_path}"])
    ctx, _, _, batches = prepare(cfg, False)
    model = build_model(cfg, ctx)
    step = CompiledStep(model, make_optimizer(model, cfg.train), ctx, cfg)
    step(batches, 0)  # traced and compiled on finite numbers
    model.embed.weight.set_data(Tensor(np.full(model.embed.weight.shape, np.nan, np.float32)))
    with pytest.raises(NonFiniteError, match=f"MoE layer {model.moe_layers[0]} .* non-finite"):
        step(batches, 1)
