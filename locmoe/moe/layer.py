"""One call of the MoE layer: route → plan → permute → all-to-all → experts → all-to-all back → combine.

Dropped copies contribute nothing here; the token keeps its residual path in the transformer block. With
``moe.overlap_chunks > 1`` this rank's tokens move in chunks so that one chunk's expert compute runs while the
next chunk's all-to-all is in flight (where the backend's collectives are asynchronous; the chunks' split sizes
are all known before the first one is sent, so no host sync sits between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import numpy as np

from locmoe.moe.records import CallPlan, CopyLayout, MoEMetrics, RouterOutput, Tensor
from locmoe.moe.routing import route
from locmoe.moe.surface import MoEOps


def token_ranks(ops: MoEOps, ep, num_tokens: int, like: Tensor, layer_id: int) -> Tensor:
    """[T] the EP rank of each token: this rank's on a real rank; one process standing in for W ranks holds
    W equal blocks of tokens, rank 0's first."""
    first, n = ep.stands_for[0], len(ep.stands_for)  # consecutive ranks
    if num_tokens % n:
        raise ValueError(
            f"MoE layer {layer_id}: one process emulating {n} ranks needs a token count "
            f"divisible by {n}, got {num_tokens}"
        )
    # made on the device (arange), not copied from the host: a CUDA graph replays no host buffer
    return ops.repeat_interleave(ops.arange(n, like=like) + first, num_tokens // n)


@dataclass(frozen=True)
class CallOptions:
    """What a caller changes in the layer's one flow; training uses the defaults, serving its own."""

    chunks: Optional[int] = None  # chunks of this rank's tokens; None: moe.overlap_chunks
    own_tokens: bool = False  # every token is this rank's (serving), not W blocks of the ranks it stands for
    losses: bool = True  # False: the same choices, the losses 0 (serving)
    check_finite: bool = True  # False: moe.check_finite is not applied (serving has no NaN counter)
    # the expert pipeline: (send rows, layout) -> finish() -> rows back in send order; None: run_chunks
    pipeline: Optional[Callable[[Tensor, CopyLayout], Callable[[], Tensor]]] = None


TRAINING = CallOptions()


def moe_forward(
    ops: MoEOps,
    layer,
    x: Tensor,
    token_ids: Optional[Tensor],
    domain: Optional[Tensor],
    training: bool,
    opts: CallOptions = TRAINING,
) -> tuple[Tensor, Tensor, MoEMetrics]:
    """x: [..., d] -> (y [..., d], auxiliary objective α·L_aux + μ·L_loc (+ z-loss), metrics).

    ``layer`` is the backend's shell: ``router``, ``experts``, ``dispatcher``, ``traffic``, ``ep``, ``moe``."""
    shape = x.shape
    check_inputs(ops, layer, x, domain, opts.check_finite)
    x = x.reshape(-1, shape[-1])
    T = x.shape[0]
    out, plan = route_and_plan(ops, layer, x, token_ids, domain, training, opts)
    with ops.phase("moe/permute"):
        send = layer.dispatcher.permute(ops.compute_dtype(x), out, plan.layout)
    finish = (opts.pipeline or partial(run_chunks, ops, layer))(send, plan.layout)
    with ops.phase("moe/combine"):
        y = layer.dispatcher.unpermute(finish(), out, plan.layout, T)
    metrics = MoEMetrics(
        plan.stats,
        ops.detach(out.aux_loss),
        ops.detach(out.locality_loss),
        layer.traffic,
        out.token,
        out.expert,
        plan.kept,
        ops.to_host,
    )
    return y.reshape(shape), auxiliary_objective(layer.moe.router, out), metrics


def route_and_plan(
    ops: MoEOps,
    layer,
    x: Tensor,
    token_ids: Optional[Tensor],
    domain: Optional[Tensor],
    training: bool,
    opts: CallOptions,
) -> tuple[RouterOutput, CallPlan]:
    """x [T, d] -> the routing of its tokens and the dispatcher's plan (after which the loss-free selection
    bias learns from the group's load)."""
    ep, router, T = layer.ep, layer.router, x.shape[0]
    if opts.own_tokens:
        token_rank, blocks = ops.full((T,), ep.rank, "int64", like=x), 1
    else:
        token_rank, blocks = token_ranks(ops, ep, T, x, layer.layer_id), len(ep.stands_for)
    flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731
    with ops.phase("moe/router"):
        local = ops.take_rows(router.node_mask, token_rank // ep.topology.devices_per_node)
        out = route(ops, router, x, local, blocks, flat(token_ids), flat(domain), losses=opts.losses)
    layer.traffic.reset()
    chunks = layer.moe.overlap_chunks if opts.chunks is None else opts.chunks
    with ops.phase("moe/capacity+admission"):
        plan = layer.dispatcher.plan(out, token_rank, T, chunks, training)
        if router.selection_bias is not None:  # loss-free balancing, from the group's load
            ops.update_selection_bias_(router, plan.stats.expert_load)
    return plan.routing, plan


def run_chunks(ops: MoEOps, layer, send: Tensor, layout: CopyLayout) -> Callable[[], Tensor]:
    """send [M, d] in send order -> finish() -> the experts' rows back in send order.

    Pipeline: every chunk's dispatch is launched first; chunk i's experts run while chunk i+1 is in flight,
    and chunk i's combine travels while chunk i+1's experts run."""
    dispatcher = layer.dispatcher
    parts = ops.split_rows(send, list(np.diff(layout.bounds))) if len(layout.chunks) > 1 else [send]
    with ops.phase("moe/all_to_all"):
        arriving = [dispatcher.dispatch(part, d) for part, d in zip(parts, layout.chunks)]
    returning = []
    for d, rows in zip(layout.chunks, arriving):
        with ops.phase("moe/experts"):
            if d.static_size is not None:
                y = layer.experts.fixed(rows(), d.static_size)
            else:
                y = layer.experts(rows(), d.expert_counts, d.dropped_tail)
        with ops.phase("moe/all_to_all"):
            returning.append(dispatcher.combine(y, d))

    def finish() -> Tensor:
        back = [rows() for rows in returning]
        return back[0] if len(back) == 1 else ops.cat(back)

    return finish


def auxiliary_objective(r, out: RouterOutput) -> Tensor:
    """α·L_aux + μ·L_loc (μ for LocMoE only) + the z-loss where ``r.z_loss_coef`` (``r``: ``moe.router``)."""
    aux = r.aux_loss_coef * out.aux_loss + (r.locality_loss_coef if r.kind == "locmoe" else 0.0) * out.locality_loss
    if r.z_loss_coef and out.z_loss is not None:  # no z-loss without the losses (serving)
        aux = aux + r.z_loss_coef * out.z_loss
    return aux


def check_inputs(ops: MoEOps, layer, x: Tensor, domain: Optional[Tensor], check_finite: bool = True) -> None:
    """The hidden size, the domain ids and (``moe.check_finite``, unless the caller opts out) NaN/Inf in the
    activations."""
    if x.shape[-1] != layer.d_model:
        raise ValueError(
            f"MoE layer {layer.layer_id}: expected hidden size {layer.d_model}, got {x.shape[-1]} "
            f"(input shape {tuple(x.shape)})"
        )
    D = layer.moe.domains.num_domains
    if domain is not None and D > 1:
        ops.check_index_range(domain, D, f"MoE layer {layer.layer_id}: domain ids", " (moe.domains.num_domains)")
    if check_finite and layer.moe.check_finite:
        layer.count_nonfinite(x)
