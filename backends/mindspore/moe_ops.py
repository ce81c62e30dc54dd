"""The MindSpore backend's op surface for the shared MoE control flow (``locmoe.moe.surface.MoEOps``).

Mostly names: the routing kernels live in ``routing_ops`` / ``routing_extras`` (explicit tie rules: MindSpore
documents no stable sort off Ascend), the collectives in ``collectives`` (the CPU all-to-all built from
AllGather, with its own bprop). The capacity kernels run the numpy reference's own functions on the host
(E numbers each): PyNative on CPU reads them back at no cost worth a device kernel.
"""

from __future__ import annotations

import contextlib
from typing import cast

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from backends.mindspore import collectives
from backends.mindspore import routing_extras as extras
from backends.mindspore import routing_ops as rops
from backends.mindspore.permute import copy_positions, take_rows, unpermute_tokens
from locmoe.routing import capacity as cap
from locmoe.routing import paper_bound

_DTYPES = {"int64": ms.int64, "float32": ms.float32, "float64": ms.float64, "bool": ms.bool_}


def _host(t) -> np.ndarray:
    return t.asnumpy() if isinstance(t, Tensor) else np.asarray(t)


def _detached_f64(t: Tensor) -> Tensor:
    """``t`` without gradient, in float64 (MindSpore's ops are unannotated: pyright infers ``stop_gradient``'s
    result as "... | None", hence the cast)."""
    return cast(Tensor, ops.stop_gradient(t)).astype(ms.float64)


class MindSporeOps:
    """``traced``: the layer runs inside a traced graph (``parallel.jit_step``), whose autodiff ignores a Cell's
    own bprop, so the CPU all-to-all takes its form that MindSpore differentiates itself."""

    traced: bool = False

    def __init__(self, compute=ms.float32):
        self.compute = compute  # the experts' dtype

    # ---------------------------------------------------------------- tensors
    def zeros(self, shape, dtype, like):
        return ops.zeros(shape, _DTYPES[dtype])

    def ones(self, shape, dtype, like):
        return ops.ones(shape, _DTYPES[dtype])

    def full(self, shape, value, dtype, like):
        return ops.full(shape, value, dtype=_DTYPES[dtype])

    def zeros_like(self, t):
        return ops.zeros_like(t)

    def ones_like(self, t, dtype=None):
        return ops.ones(t.shape, t.dtype if dtype is None else _DTYPES[dtype])

    def full_like(self, t, value):
        return ops.full(t.shape, value, dtype=t.dtype)

    def arange(self, n, like):
        return rops.arange(n)

    def index_tensor(self, values, like):
        return Tensor(np.asarray(values, dtype=np.int64))

    def to_host(self, t):
        return _host(t)

    def same_device(self, a, b):
        return True

    def cast(self, t, dtype):
        return t.astype(_DTYPES[dtype])

    def cast_like(self, t, other):
        return t.astype(other.dtype)

    def detach(self, t):
        return ops.stop_gradient(t)

    def where(self, cond, a, b):
        return ops.where(cond, a, b)

    def masked_fill(self, t, mask, value):
        return ops.masked_fill(t, mask, value)

    def relu(self, t):
        return ops.relu(t)

    def matmul(self, a, b):
        return ops.matmul(a, b)

    def sum(self, t):
        return t.sum()

    def mean(self, t):
        return t.mean()

    def clamp_min(self, t, low):
        return ops.maximum(t, ops.full(t.shape, low, dtype=t.dtype))

    def expand(self, scalar, n):
        return ops.broadcast_to(scalar.reshape(1), (n,)).copy()

    def nanmax(self, t):
        return ops.where(ops.isnan(t), ops.full(t.shape, float("-inf"), dtype=t.dtype), t).max()

    def all_nan(self, t):
        return cast(Tensor, ops.isnan(t)).all()  # unannotated op: pyright infers "... | None"

    def stack(self, ts, axis=0):
        # cat, not ops.stack: the bprop of Stack fails inside a traced graph (MindSpore 2.10)
        return ops.cat([ops.expand_dims(t, axis) for t in ts], axis)

    def cat(self, ts):
        return ops.cat(list(ts))

    def cumsum(self, t):
        return ops.cumsum(t, 0)

    def transpose(self, t):
        return t.T

    def count_true(self, mask):
        return mask.astype(ms.int64).sum(axis=-1)

    def pad_row(self, t):
        return ops.cat([t, ops.zeros((1, *t.shape[1:]), t.dtype)])

    def split_rows(self, t, sizes):
        bounds = np.cumsum([0, *sizes]).tolist()
        return [t[bounds[c] : bounds[c + 1]] for c in range(len(sizes))]

    def take(self, t, index):
        if index.shape[0] == 0:
            return t[:0]
        return take_rows(t, index)

    def take_rows(self, t, index):
        return take_rows(t, index)

    def take_along_rows(self, t, index):
        return ops.gather_elements(t, 1, index)

    def repeat_interleave(self, t, repeats):
        return ops.repeat_interleave(t, repeats, 0)

    def nonzero(self, mask):
        return ops.nonzero(mask).reshape(-1)

    def argsort_stable(self, key):
        # distinct keys (key, index): any sort then gives the stable order (no stable sort off Ascend)
        C = key.shape[0]
        return rops.argsort_unique(key.astype(ms.int64) * C + rops.arange(C))

    def counts_of(self, index, n, where=None):
        # on the device (a count read on the host would be a constant in a traced graph), as a sum of one-hot
        # rows: CPU's scatter-add (TensorScatterElements, reduction add) loses updates to its threads
        # (a new axis by reshape: by indexing, t[:, None], it is a CPU StridedSlice, ~0.3 ms on [4096])
        hit = index.astype(ms.int64).reshape(-1, 1) == rops.arange(n).reshape(1, n)
        if where is not None:
            hit = hit & where.reshape(-1, 1)
        return hit.astype(ms.int64).sum(axis=0)

    # ---------------------------------------------------------------- state, checks, execution
    def assign_(self, state, value):
        state.set_data(value)

    def update_selection_bias_(self, router, load):
        if router.training:
            rate = router.moe.router.bias_update_rate
            bias = router.selection_bias
            bias.set_data(Tensor(extras.update_selection_bias(bias.asnumpy(), _host(load), rate)))

    def check_index_range(self, t, n, what, why=""):
        v = _host(t)
        if v.size and (v.min() < 0 or v.max() >= n):
            raise ValueError(f"{what} must lie in [0, {n}){why}, got [{v.min()}, {v.max()}]")

    def compute_dtype(self, x):
        return x if x.dtype == self.compute else x.astype(self.compute)

    def phase(self, name):
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- routing kernels
    def grap_scores(self, x, num_experts):
        return rops.grap_scores(x, num_experts)

    def affinities(self, scoring, logits):
        return extras.affinities(scoring, logits)

    def gate_angles(self, x, gate_weight):
        # float64 so that the bound's comparisons agree with the numpy reference
        return rops.gate_angles(_detached_f64(x), _detached_f64(gate_weight))

    def basis_angles(self, scores):
        eye = Tensor(np.eye(scores.shape[1]))
        return rops.gate_angles(_detached_f64(scores), eye)

    def cosine_deviation(self, x, columns):
        return extras.cosine_deviation(x, columns)

    def top_k(self, p, k):
        return rops.top_k(p, k)

    def selection_scores(self, affinity, bias, allowed):
        return extras.selection_scores(affinity, bias, allowed)

    def intra_node_first(self, probs, k, local, rho):
        return rops.intra_node_first(probs, k, local, rho)

    def node_limited_top_k(self, sel, k, num_nodes, node_table, node_of_expert, how):
        return extras.node_limited_top_k(sel, k, num_nodes, _host(node_table), how)

    def combine_weights(self, chosen):
        return rops.combine_weights(chosen)

    def load_balance_loss(self, probs, expert_ids, num_experts):
        return rops.load_balance_loss(probs, expert_ids, num_experts)

    def locality_loss(self, log_probs, local):
        return rops.locality_loss(log_probs, local)

    def batch_locality_loss(self, probs, local, allowed, blocks, smoothing):
        return extras.batch_locality_loss(probs, local, allowed, blocks, smoothing).astype(ms.float32)

    def router_z_loss(self, logits):
        return extras.router_z_loss(logits).astype(ms.float32)

    def expert_choice(self, probs, capacity):
        return rops.expert_choice(probs, capacity)

    def admit(self, expert, prob, locality, capacity):
        return rops.admit(expert, prob, locality, capacity)

    # ---------------------------------------------------------------- capacity kernels (the numpy reference's)
    def expert_angles(self, angles, expert, num_experts, quantile):
        delta, seen = cap.expert_angles(_host(angles), _host(expert), num_experts, quantile)
        return Tensor(delta), Tensor(seen)

    def update_angle_ema(self, ema, delta, seen, momentum):
        return Tensor(cap.update_angle_ema(_host(ema), _host(delta), _host(seen), momentum))

    def quantile_cone_counts(self, copy_angle, copy_expert, num_experts, ema, token_angles, quantile, momentum):
        delta, seen = cap.expert_angles(_host(copy_angle), _host(copy_expert), num_experts, quantile)
        average = Tensor(cap.update_angle_ema(_host(ema), delta, seen, momentum))
        inside = (token_angles <= average[None, :]).astype(ms.float64).sum(axis=0)
        return average, inside

    def quantile_capacity(self, inside, ema, k, num_tokens, slack, floor, factor_cap):
        inside = _host(inside)
        shares = inside / inside.sum() if inside.sum() > 0 else np.full(len(inside), 1.0 / len(inside))
        capacity = cap.per_expert_bound(shares, k, num_tokens, slack)
        kept = np.maximum(cap.unseen_fallback(capacity, _host(ema), factor_cap), floor)
        return Tensor(kept.astype(np.int64)), int(capacity.max())

    def unseen_fallback(self, capacity, ema, factor_cap):
        return Tensor(cap.unseen_fallback(_host(capacity), _host(ema), factor_cap).astype(np.int64))

    def update_paper_delta(self, state, delta, seen, schedule, momentum):
        return Tensor(paper_bound.update_paper_delta(_host(state), _host(delta), _host(seen), schedule, momentum))

    def paper_capacity(self, delta, d, n, k, num_tokens, form):
        value = float(_host(delta))
        value = min(max(value, 0.0), 1.0) if np.isfinite(value) else 0.0  # as the torch kernel clamps
        return Tensor(np.int64(paper_bound.paper_capacity(value, d, n, k, num_tokens, form)))

    # ---------------------------------------------------------------- collectives
    def all_gather_rows(self, t, group):
        return collectives.all_gather_rows(t, group)

    def all_reduce(self, t, group):
        return collectives.all_reduce(t, group)

    def all_to_all(self, x, send, recv, group, counter, stage):
        return collectives.all_to_all(x, send, recv, group, counter, stage, autodiff=self.traced)

    def all_to_all_start(self, x, send, recv, group, counter, stage):
        return collectives.all_to_all_start(x, send, recv, group, counter, stage, autodiff=self.traced)

    # ---------------------------------------------------------------- moving copies
    def copy_positions(self, order, num_kept, num_copies):
        return copy_positions(order, num_kept)

    def permute_copies(self, x, row_token, pos, kept):
        return take_rows(x, row_token)

    def combine_copies(self, rows, weight, pos, kept, row_token, row_copy):
        if kept is not None:
            weight = weight * kept.astype(weight.dtype)  # dropped copies weigh nothing
        return unpermute_tokens(rows, weight, pos)

    def scatter_add_rows(self, rows, weight, token, num_tokens):
        return ops.unsorted_segment_sum(rows * weight[:, None].astype(rows.dtype), token, num_tokens)
