"""AdamW, gradient synchronisation across ranks, and global-norm clipping (the twin of ``backends.torch.optim``).

The objective of a W-rank run is the mean of the ranks' losses, so every gradient is averaged over W.
Replicated parameters: all-reduce over the world, divide by W. Expert parameters: the all-to-all's
backward already summed every rank's contribution on the expert's owner; all-reduce over the ranks that
hold the same experts (if EP < world) and divide by W. One process emulating W ranks needs neither.

AdamW is torch's update rule (decoupled decay, bias-corrected moments) on MindSpore's fused kernel
(``ops.AdamWeightDecay``, which has neither bias correction nor decoupled decay: both are folded into its
coefficients, :func:`fused_coefficients`), not ``mindspore.nn``'s optimiser, so that its state — per parameter
name, ``exp_avg`` and ``exp_avg_sq``, plus one step count — converts one to one to and from a torch optimiser
(``locmoe convert``). The fused kernel updates in place, 4-6x faster than the rule written out as tensor ops
(measured, CPU); ``tests/backends/mindspore/test_optim.py`` holds it to the rule in float64.
"""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, Tensor, ops

from backends.mindspore.collectives import all_reduce
from backends.mindspore.distributed import DistContext
from locmoe.config.schema import TrainConfig
from locmoe.model_spec import is_expert_param


class AdamW:
    """AdamW over named parameters; weight decay on matrices and embeddings, none on norms. The moments are
    Parameters, which the fused kernel updates in place (in PyNative and inside the compiled step's graph).
    ``step`` = ``owned`` → ``apply`` → ``publish``, the stages ``sharded_adamw.ShardedAdamW`` (``parallel.shard``)
    replaces to update slices and gather them; the compiled step runs ``apply``'s kernel in its own graph."""

    def __init__(self, params: dict[str, Parameter], t: TrainConfig):
        self.params = params
        self.lr, self.betas, self.eps = t.lr, (t.beta1, t.beta2), 1e-8
        self.decay = {n: (t.weight_decay if p.ndim >= 2 else 0.0) for n, p in params.items()}
        self.step_count = 0
        self.exp_avg = {n: moment("exp_avg", n, self.zeros(n, p)) for n, p in params.items()}
        self.exp_avg_sq = {n: moment("exp_avg_sq", n, self.zeros(n, p)) for n, p in params.items()}

    def zeros(self, name: str, p: Parameter) -> Tensor:
        """A moment's start (``sharded_adamw.ShardedAdamW`` keeps a slice)."""
        return ops.zeros(p.shape, ms.float32)

    def step(self, grads: dict[str, Tensor]) -> None:
        self.step_count += 1
        self.apply(*self.owned(grads))
        self.publish()

    def owned(self, grads: dict[str, Tensor]) -> tuple[dict, dict]:
        """(what the fused kernel updates in place, its gradients) by name: here the whole parameters."""
        return self.params, grads

    def apply(self, weights: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
        """One fused AdamW update of ``weights`` (``owned``'s) and the moments, at ``step_count``."""
        lr, eps, decay = (Tensor(c, ms.float32) for c in self.coefficients())
        b1, b2 = self.betas
        for name, w in weights.items():
            d = decay if self.decay[name] else _NO_DECAY
            fused_adamw(w, self.exp_avg[name], self.exp_avg_sq[name], lr, b1, b2, eps, d, grads[name])

    def publish(self) -> None:
        """Make the parameters whole on every rank after ``apply``: nothing to do, ``apply`` updated them."""

    def coefficients(self) -> tuple:
        """The fused kernel's (lr, epsilon, decay) at this step (``step_count``, already counted)."""
        weight_decay = max(self.decay.values(), default=0.0)
        return fused_coefficients(self.lr, weight_decay, self.step_count, self.betas, self.eps)

    def state_dict(self) -> dict:
        """{"step": int, "exp_avg": {name: Tensor}, "exp_avg_sq": {name: Tensor}}."""
        return {"step": self.step_count, "exp_avg": dict(self.exp_avg), "exp_avg_sq": dict(self.exp_avg_sq)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("exp_avg", "exp_avg_sq"):
            missing = set(self.params) - set(state[key])
            if missing:
                raise KeyError(f"optimiser state lacks {key} of {sorted(missing)[:5]}")
            for n, moment in getattr(self, key).items():
                moment.set_data(Tensor(state[key][n], ms.float32))
        self.step_count = int(state["step"])


fused_adamw = ops.AdamWeightDecay()
_NO_DECAY = Tensor(0.0, ms.float32)


def moment(key: str, name: str, value: Tensor) -> Parameter:
    return Parameter(value, name=f"{key}.{name}", requires_grad=False)


def fused_coefficients(lr: float, weight_decay: float, step: int, betas: tuple, eps: float) -> tuple:
    """(lr', eps', decay') for ``ops.AdamWeightDecay`` (w -= lr'·(m / (√v + eps') + decay'·w)) so that it takes
    torch's AdamW step: w·(1 - lr·wd) - lr/c1 · m / (√v/√c2 + eps), with c1, c2 = 1 - β^step. Multiplying that
    fraction's numerator and denominator by √c2 gives lr' = lr·√c2/c1 and eps' = eps·√c2; decay' = lr·wd/lr'."""
    c1, c2 = 1 - betas[0] ** step, 1 - betas[1] ** step
    lr_fused = lr * math.sqrt(c2) / c1
    return lr_fused, eps * math.sqrt(c2), lr * weight_decay / lr_fused if lr_fused else 0.0


def make_optimizer(model, t: TrainConfig) -> AdamW:
    return AdamW({n: p for n, p in model.parameters_and_names() if p.requires_grad}, t)


def set_lr(optimizer: AdamW, lr: float) -> None:
    optimizer.lr = lr


def _reduce_flat(grads: dict, names: list, group, scale: float) -> None:
    if not names:
        return
    flat = all_reduce(ops.cat([grads[n].reshape(-1) for n in names]), group) * scale
    offset = 0
    for n in names:
        size = grads[n].size
        grads[n] = flat[offset : offset + size].reshape(grads[n].shape)
        offset += size


def sync_gradients(grads: dict[str, Tensor], ctx: DistContext) -> None:
    """Average ``grads`` (name → gradient, replaced in place) over the ranks, as the torch backend does."""
    if ctx.world_size == 1:
        return
    dense = [n for n in grads if not is_expert_param(n)]
    expert = [n for n in grads if is_expert_param(n)]
    W = ctx.world_size
    _reduce_flat(grads, dense, ctx.world, 1.0 / W)
    _reduce_flat(grads, expert, ctx.expert_dp, 1.0 / W)


def clip_grad_norm(grads: dict[str, Tensor], ctx: DistContext, max_norm: float) -> float:
    """Global L2 norm over every parameter of the model (experts counted once per EP group); clip to
    ``max_norm`` when > 0. Returns the norm before clipping."""
    sq = lambda names: sum(float((grads[n].astype(ms.float64) ** 2).sum().asnumpy()) for n in names)  # noqa
    dense_sq = sq([n for n in grads if not is_expert_param(n)])
    expert_sq = sq([n for n in grads if is_expert_param(n)])
    if ctx.world_size > 1:
        expert_sq = float(all_reduce(Tensor([expert_sq], ms.float64), ctx.ep).asnumpy()[0])
    norm = math.sqrt(dense_sq + expert_sq)
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for n in grads:
            grads[n] = grads[n] * scale
    return norm


def all_reduce_mean(values: list[float], ctx: DistContext) -> list[float]:
    t = Tensor(values, ms.float64)
    if ctx.world_size > 1:
        t = all_reduce(t, ctx.world) / ctx.world_size
    return [float(v) for v in t.asnumpy()]
