"""One optimiser step of the MindSpore backend: op by op in PyNative (``EagerStep``), or compiled
(``parallel.jit_step``, ``CompiledStep``): forward and backward of a micro-batch as one graph, gradient
clipping and AdamW as two more; between them only the gradient sums and, across ranks, their all-reduce run op
by op.

Forward and backward: ``mindspore.jit``'s trace capture of the whole model, MoE layers included, and the
gradient of that graph. Trace capture runs the Python once and records the operators, so the shared MoE
control flow (``locmoe.moe``) compiles as it is; what it needs from the step is what a CUDA graph needs
(``backends.torch.step_graph``): fixed shapes and no device value read on the host. Static dispatch with a
factor capacity gives both (``locmoe.config.checks._check_jit_step`` refuses the rest); the layers' NaN/Inf
checks become counts the step returns and checks (``MoELayer.defer_checks``). The update: ``mindspore.jit``'s
ast capture of functions over the flat parameters, gradients and moments, updating the parameters and moments
in place with the PyNative optimiser's fused kernel and coefficients (``optim.AdamW``; the clipping as
``clip_grad_norm`` clips), so the same numbers come out. With AdamW's moments sharded
(``sharded_adamw.ShardedAdamW``) the update graph takes this rank's slices, and the AllGather that rebuilds the
parameters runs after it, op by op.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, cast

import mindspore as ms
from mindspore import Tensor, ops

from backends.mindspore.collectives import all_reduce
from backends.mindspore.distributed import DistContext
from backends.mindspore.lm_loss import cross_entropy
from backends.mindspore.optim import AdamW, clip_grad_norm, fused_adamw, sync_gradients
from backends.mindspore.trace_capture import trace
from locmoe.config.schema import JobConfig
from locmoe.model_spec import is_expert_param
from locmoe.moe.records import tensor_leaves, with_leaves


def loss_of(model, x, y, d):
    logits, aux, metrics = model(x, d)
    lm = cross_entropy(logits.astype(ms.float32).reshape(-1, logits.shape[-1]), y.reshape(-1))
    return lm, aux, metrics


class Step:
    """Forward + backward of one micro-batch: (lm loss, aux objective, metrics, gradients by name)."""

    def __init__(self, model, optimizer, grad_accum: int):
        self.model, self.names = model, list(optimizer.params)
        self.seen: dict = {}

        def objective(x, y, d):
            lm, aux, metrics = loss_of(model, x, y, d)
            self.seen.update(lm=lm, aux=aux, metrics=metrics)
            return (lm + aux) / grad_accum

        weights = list(optimizer.params.values())
        # grad_position None: the weights' gradients only (documented, though typed int); the return is typed as
        # a union of outputs, not as the function it is
        self.grad: Callable[..., Any] = ms.value_and_grad(objective, None, weights)  # pyright: ignore[reportArgumentType]

    def __call__(self, x, y, d):
        _, grads = self.grad(x, y, d)
        s = self.seen
        return s["lm"], s["aux"], s["metrics"], dict(zip(self.names, grads))


class EagerStep:
    """One optimiser step in PyNative: micro-batches → gradient sync → clip → AdamW; returns (lm loss, auxiliary
    objective, metrics, gradient norm) of the last micro-batch (``train_step.CompiledStep`` compiles it)."""

    def __init__(self, model, optimizer, ctx: DistContext, cfg: JobConfig):
        self.optimizer, self.ctx, self.t = optimizer, ctx, cfg.train
        self.micro_step = Step(model, optimizer, cfg.train.grad_accum)

    def __call__(self, batches, step: int):
        grads = None
        for micro in range(self.t.grad_accum):
            lm, aux, metrics, g = self.micro_step(*batches.get(step, micro))
            grads = accumulate(grads, g)
        assert grads is not None  # grad_accum >= 1 (the schema's bound)
        sync_gradients(grads, self.ctx)
        grad_norm = clip_grad_norm(grads, self.ctx, self.t.grad_clip)
        self.optimizer.step(grads)
        return lm, aux, metrics, grad_norm


def accumulate(total: dict | None, grads: dict) -> dict:
    return grads if total is None else {n: total[n] + g for n, g in grads.items()}


def _is_tensor(value) -> bool:
    return isinstance(value, Tensor)


def squared_norms(expert: tuple):
    """jit(*grads) -> (Σ g² over the replicated parameters, Σ g² over the experts), float32 as torch's
    clip_grad_norm sums them; each Σ g² a dot product (a MatMul: 3x faster than a squaring and a sum on CPU)."""

    def norms(*grads):
        dense = ops.zeros((), ms.float32)
        experts = ops.zeros((), ms.float32)
        for i in range(len(grads)):
            g = grads[i].astype(ms.float32)
            sq = ops.matmul(g.reshape(1, -1), g.reshape(-1, 1)).reshape(())
            if expert[i]:
                experts = experts + sq
            else:
                dense = dense + sq
        return dense, experts

    return cast(Callable[..., Any], ms.jit(norms))  # jit's return is typed as a union of outputs


def adamw_update(decayed: tuple, betas: tuple, max_norm: float):
    """jit(dense², expert², lr', eps', decay', *params, *grads, *exp_avg, *exp_avg_sq) -> the global norm, after
    clipping the gradients to ``max_norm`` and one AdamW step written into the parameters and the moments by the
    PyNative optimiser's fused kernel (``optim.fused_coefficients``: lr', eps', decay')."""
    n = len(decayed)

    def update(dense_sq, expert_sq, lr, eps, decay, *flat):
        norm = ops.sqrt(dense_sq + expert_sq)
        scale = ops.ones((), ms.float32)
        if max_norm > 0:
            scale = ops.where(norm > max_norm, max_norm / (norm + 1e-6), scale)
        no_decay = ops.zeros((), ms.float32)
        for i in range(n):
            p, g, m, v = flat[i], flat[n + i] * scale, flat[2 * n + i], flat[3 * n + i]
            fused_adamw(p, m, v, lr, betas[0], betas[1], eps, decay if decayed[i] else no_decay, g)
        return norm

    return cast(Callable[..., Any], ms.jit(update))  # jit's return is typed as a union of outputs


class CompiledStep:
    """``step(batches, step)`` → (lm loss, auxiliary objective, MoE metrics, gradient norm tensor) of one
    optimiser step, the parameters and the optimiser state updated: what the PyNative loop of
    ``backends.mindspore.train`` computes. The first call traces and compiles (its time is the first step's)."""

    def __init__(self, model, optimizer: AdamW, ctx, cfg: JobConfig):
        t = cfg.train
        self.model, self.optimizer, self.ctx, self.grad_accum = model, optimizer, ctx, t.grad_accum
        self.names = list(optimizer.params)
        self.moe_cells = [model.layers[i].moe for i in model.moe_layers]
        self.check_finite = cfg.moe.check_finite and bool(self.moe_cells)
        self.template: Optional[list] = None  # the metrics of the traced call, their tensors refilled per step
        # a function, not the bound method: trace capture takes a method's first argument for a Cell
        forward = trace(lambda x, y, d: self._forward(x, y, d))
        weights = list(optimizer.params.values())
        # grad_position None: the weights' gradients only (as in Step)
        self.grad: Callable[..., Any] = ms.value_and_grad(forward, None, weights, has_aux=True)  # pyright: ignore[reportArgumentType]
        self.norms = squared_norms(tuple(is_expert_param(n) for n in self.names))
        decayed = tuple(optimizer.decay[n] > 0 for n in self.names)
        self.update = adamw_update(decayed, optimizer.betas, t.grad_clip)

    def _forward(self, x, y, d):
        """Traced once: the Python below runs at the first call only, its operators replay after. The layers
        trace their graph forms (deferred NaN/Inf checks, the CPU all-to-all that autodiff differentiates);
        outside it (validation) they run as in PyNative."""
        self._tracing(True)
        try:
            lm, aux, metrics = loss_of(self.model, x, y, d)
        finally:
            self._tracing(False)
        self.template = metrics
        leaves = [leaf for m in metrics for leaf in tensor_leaves(m, _is_tensor)]
        # the layers' NaN/Inf counts as one output, read once (each output costs autodiff a zero gradient)
        counts = [ops.cat([cell.nonfinite.reshape(1) for cell in self.moe_cells])] if self.check_finite else []
        return ((lm + aux) / self.grad_accum, lm, aux, *leaves, *counts)

    def _tracing(self, on: bool) -> None:
        for cell in self.moe_cells:
            cell.defer_checks = cell.ops.traced = on

    def __call__(self, batches, step: int):
        grads, counted = None, 1 if self.check_finite else 0
        for micro in range(self.grad_accum):
            (_, lm, aux, *rest), g = self.grad(*batches.get(step, micro))
            leaves, counts = rest[: len(rest) - counted], rest[len(rest) - counted :]
            self._raise_if_nonfinite(counts)
            grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
        assert grads is not None  # grad_accum >= 1 (the schema's bound)
        return lm, aux, self._metrics(leaves), self._apply(grads)

    def _apply(self, grads: list) -> Tensor:
        o = self.optimizer
        if self.ctx.world_size > 1:
            named = dict(zip(self.names, grads))
            sync_gradients(named, self.ctx)
            grads = [named[n] for n in self.names]
        dense_sq, expert_sq = self.norms(*grads)
        if self.ctx.world_size > 1:
            expert_sq = all_reduce(expert_sq.reshape(1), self.ctx.ep).reshape(())
        o.step_count += 1
        # the clip scales elementwise, so a sharded optimiser's slices of the gradients clip as the whole ones
        weights, owned = o.owned(dict(zip(self.names, grads)))
        norm = self.update(
            dense_sq,
            expert_sq,
            *(Tensor(c, ms.float32) for c in o.coefficients()),
            *[weights[n] for n in self.names],
            *[owned[n] for n in self.names],
            *[o.exp_avg[n] for n in self.names],
            *[o.exp_avg_sq[n] for n in self.names],
        )
        o.publish()
        return norm

    def _metrics(self, leaves: list) -> list:
        """The traced call's metrics with this step's tensors."""
        leaves = list(leaves)
        assert self.template is not None  # set by the traced first call, before any step returns
        return [with_leaves(m, leaves, _is_tensor) for m in self.template]

    def _raise_if_nonfinite(self, counts: list) -> None:
        if counts:
            for cell, count in zip(self.moe_cells, counts[0].asnumpy()):
                cell.raise_if_nonfinite(int(count))
