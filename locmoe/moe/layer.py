"""One call of the MoE layer: route → plan → permute → all-to-all → experts → all-to-all back → combine.

Dropped copies contribute nothing here; the token keeps its residual path in the transformer block. With
``moe.overlap_chunks > 1`` this rank's tokens move in chunks so that one chunk's expert compute runs while the
next chunk's all-to-all is in flight (where the backend's collectives are asynchronous; the chunks' split sizes
are all known before the first one is sent, so no host sync sits between them).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from locmoe.moe.records import MoEMetrics, Tensor
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


def moe_forward(
    ops: MoEOps, layer, x: Tensor, token_ids: Optional[Tensor], domain: Optional[Tensor], training: bool
) -> tuple[Tensor, Tensor, MoEMetrics]:
    """x: [..., d] -> (y [..., d], auxiliary objective α·L_aux + μ·L_loc (+ z-loss), metrics).

    ``layer`` is the backend's shell: ``router``, ``experts``, ``dispatcher``, ``traffic``, ``ep``, ``moe``."""
    moe, ep, router, dispatcher = layer.moe, layer.ep, layer.router, layer.dispatcher
    shape = x.shape
    check_inputs(ops, layer, x, domain)
    x = x.reshape(-1, shape[-1])
    T = x.shape[0]
    token_rank = token_ranks(ops, ep, T, x, layer.layer_id)
    flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731
    with ops.phase("moe/router"):
        local = ops.take_rows(router.node_mask, token_rank // ep.topology.devices_per_node)
        out = route(ops, router, x, local, len(ep.stands_for), flat(token_ids), flat(domain))
    layer.traffic.reset()
    with ops.phase("moe/capacity+admission"):
        out, layout, stats, kept = dispatcher.plan(out, token_rank, T, moe.overlap_chunks, training)
        if router.selection_bias is not None:  # loss-free balancing, from the group's load
            ops.update_selection_bias_(router, stats.expert_load)
    with ops.phase("moe/permute"):
        send = dispatcher.permute(ops.compute_dtype(x), out, layout)
    parts = ops.split_rows(send, list(np.diff(layout.bounds))) if len(layout.chunks) > 1 else [send]
    # Pipeline: every chunk's dispatch is launched first; chunk i's experts run while chunk i+1 is in flight,
    # and chunk i's combine travels while chunk i+1's experts run.
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
    with ops.phase("moe/combine"):
        back = [rows() for rows in returning]
        y = dispatcher.unpermute(back[0] if len(back) == 1 else ops.cat(back), out, layout, T)
    r = moe.router
    aux = r.aux_loss_coef * out.aux_loss + (r.locality_loss_coef if r.kind == "locmoe" else 0.0) * out.locality_loss
    if r.z_loss_coef:
        aux = aux + r.z_loss_coef * out.z_loss
    metrics = MoEMetrics(
        stats,
        ops.detach(out.aux_loss),
        ops.detach(out.locality_loss),
        layer.traffic,
        out.token,
        out.expert,
        kept,
        ops.to_host,
    )
    return y.reshape(shape), aux, metrics


def check_inputs(ops: MoEOps, layer, x: Tensor, domain: Optional[Tensor]) -> None:
    """The hidden size, the domain ids and (``moe.check_finite``) NaN/Inf in the activations."""
    if x.shape[-1] != layer.d_model:
        raise ValueError(
            f"MoE layer {layer.layer_id}: expected hidden size {layer.d_model}, got {x.shape[-1]} "
            f"(input shape {tuple(x.shape)})"
        )
    D = layer.moe.domains.num_domains
    if domain is not None and D > 1:
        ops.check_index_range(domain, D, f"MoE layer {layer.layer_id}: domain ids", " (moe.domains.num_domains)")
    if layer.moe.check_finite:
        layer.count_nonfinite(x)
