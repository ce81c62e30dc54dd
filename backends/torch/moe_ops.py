"""The torch backend's op surface for the shared MoE control flow (``locmoe.moe.surface.MoEOps``).

Mostly names: the routing kernels live in ``routing_ops`` / ``routing_extras`` (numpy twins in
``locmoe.routing``), the collectives in ``collectives``, the permutation with its gather-only backward in
``permute``. ``fuse`` (``moe.fuse_kernels``) picks the compiled kernels of ``fusion`` on CUDA.

NOTE: host syncs — only ``to_host`` (and ``check_index_range`` on CPU, where it costs none).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.profiler import record_function

from backends.torch import collectives
from backends.torch import routing_extras as extras
from backends.torch import routing_ops as ops
from backends.torch.permute import PermuteTokens, UnpermuteTokens, copy_positions

_DTYPES = {"int64": torch.long, "float32": torch.float32, "float64": torch.float64, "bool": torch.bool}


class TorchOps:
    def __init__(self, fuse: bool = True):
        self.fuse = fuse

    # ---------------------------------------------------------------- tensors
    def zeros(self, shape, dtype, like):
        return torch.zeros(shape, dtype=_DTYPES[dtype], device=like.device)

    def ones(self, shape, dtype, like):
        return torch.ones(shape, dtype=_DTYPES[dtype], device=like.device)

    def full(self, shape, value, dtype, like):
        return torch.full(shape, value, dtype=_DTYPES[dtype], device=like.device)  # a fill: no host copy

    def zeros_like(self, t):
        return torch.zeros_like(t)

    def ones_like(self, t, dtype=None):
        return torch.ones_like(t, dtype=None if dtype is None else _DTYPES[dtype])

    def full_like(self, t, value):
        return torch.full_like(t, value)

    def arange(self, n, like):
        return torch.arange(n, device=like.device)

    def index_tensor(self, values, like):
        return torch.from_numpy(np.asarray(values, dtype=np.int64)).to(like.device)

    def to_host(self, t):
        return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

    def same_device(self, a, b):
        return a.device == b.device

    def cast(self, t, dtype):
        return t.to(_DTYPES[dtype])

    def cast_like(self, t, other):
        return t.to(other.dtype)

    def detach(self, t):
        return t.detach()

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def masked_fill(self, t, mask, value):
        return t.masked_fill(mask, value)

    def relu(self, t):
        return torch.relu(t)

    def matmul(self, a, b):
        return a @ b

    def sum(self, t):
        return t.sum()

    def mean(self, t):
        return t.mean()

    def clamp_min(self, t, low):
        return torch.clamp(t, min=low)

    def expand(self, scalar, n):
        return scalar.expand(n).clone()

    def nanmax(self, t):
        return torch.where(torch.isnan(t), torch.full_like(t, float("-inf")), t).amax()

    def all_nan(self, t):
        return torch.isnan(t).all()

    def stack(self, ts, axis=0):
        return torch.stack(list(ts), dim=axis)

    def cat(self, ts):
        return torch.cat(list(ts))

    def cumsum(self, t):
        return torch.cumsum(t, 0)

    def transpose(self, t):
        return t.t()

    def count_true(self, mask):
        return mask.sum(dim=-1)

    def pad_row(self, t):
        return torch.cat([t, t.new_zeros(1, *t.shape[1:])])

    def split_rows(self, t, sizes):
        # split, not slices: a slice's backward zero-fills a buffer of the whole size per chunk
        return list(t.split([int(s) for s in sizes]))

    def take(self, t, index):
        return t.index_select(0, index)

    def take_rows(self, t, index):
        return t.index_select(0, index)

    def take_along_rows(self, t, index):
        return t.gather(1, index)

    def repeat_interleave(self, t, repeats):
        return t.repeat_interleave(repeats)

    def nonzero(self, mask):
        return torch.nonzero(mask).reshape(-1)

    def argsort_stable(self, key):
        return torch.sort(key, stable=True).indices

    def counts_of(self, index, n, where=None):
        return ops.counts_of(index, n, where)

    # ---------------------------------------------------------------- state, checks, execution
    def assign_(self, state, value):
        with torch.no_grad():
            state.copy_(value)

    def update_selection_bias_(self, router, load):
        extras.update_selection_bias_(router, load)

    def check_index_range(self, t, n, what, why=""):
        # NOTE: checked on the CPU only; on an accelerator reading the range back would be a host sync per
        # layer, and an id out of range stops the gather that uses it with a device-side assert instead
        if t.device.type != "cpu" or t.numel() == 0:
            return
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= n:
            raise ValueError(f"{what} must lie in [0, {n}){why}, got [{low}, {high}]")

    def compute_dtype(self, x):
        """x in the autocast dtype when autocast is on: the router reads the residual stream's precision, the
        experts' grouped GEMMs (which autocast does not cover) and the token movement run in bf16 — half the
        bytes, and grouped_mm's bf16 kernels instead of a per-expert loop."""
        kind = x.device.type
        return x.to(torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else x

    def phase(self, name):
        return record_function(name)

    # ---------------------------------------------------------------- routing kernels
    def grap_scores(self, x, num_experts):
        return ops.grap_scores(x, num_experts)

    def affinities(self, scoring, logits):
        return extras.affinities(scoring, logits)

    def gate_angles(self, x, gate_weight):
        with torch.no_grad():  # float64 so that the bound's comparisons agree with the numpy reference
            return ops.gate_angles(x.double(), gate_weight.double())

    def basis_angles(self, scores):
        with torch.no_grad():
            return ops.basis_angles(scores.double())

    def cosine_deviation(self, x, columns):
        return extras.cosine_deviation(x, columns)

    def top_k(self, p, k):
        return ops.top_k(p, k)

    def selection_scores(self, affinity, bias, allowed):
        return extras.selection_scores(affinity, bias, allowed)

    def intra_node_first(self, probs, k, local, rho):
        return ops.intra_node_first(probs, k, local, rho)

    def node_limited_top_k(self, sel, k, num_nodes, node_table, node_of_expert, how):
        return extras.node_limited_top_k(sel, k, num_nodes, node_table, node_of_expert, how)

    def combine_weights(self, chosen):
        return ops.combine_weights(chosen)

    def load_balance_loss(self, probs, expert_ids, num_experts):
        return ops.load_balance_loss(probs, expert_ids, num_experts)

    def locality_loss(self, log_probs, local):
        return ops.locality_loss(log_probs, local)

    def batch_locality_loss(self, probs, local, allowed, blocks, smoothing):
        return extras.batch_locality_loss(probs, local, allowed, blocks, smoothing)

    def router_z_loss(self, logits):
        return extras.router_z_loss(logits)

    def expert_choice(self, probs, capacity):
        return ops.expert_choice(probs, capacity)

    def admit(self, expert, prob, locality, capacity):
        return ops.admit(expert, prob, locality, capacity)

    # ---------------------------------------------------------------- capacity kernels
    def expert_angles(self, angles, expert, num_experts, quantile):
        return ops.expert_angles(angles, expert, num_experts, quantile)

    def update_angle_ema(self, ema, delta, seen, momentum):
        return ops.update_angle_ema(ema, delta, seen, momentum)

    def quantile_cone_counts(self, copy_angle, copy_expert, num_experts, ema, token_angles, quantile, momentum):
        ordered, counts = ops.sort_by_expert(copy_angle.double(), copy_expert, num_experts)
        return ops.quantile_cone_counts(ordered, counts, ema, token_angles, quantile, momentum, fuse=self.fuse)

    def quantile_capacity(self, inside, ema, k, num_tokens, slack, floor, factor_cap):
        return ops.quantile_capacity(inside, ema, k, num_tokens, slack, floor, factor_cap, fuse=self.fuse)

    def unseen_fallback(self, capacity, ema, factor_cap):
        return ops.unseen_fallback(capacity, ema, factor_cap)

    def update_paper_delta(self, state, delta, seen, schedule, momentum):
        return extras.update_paper_delta(state, delta, seen, schedule, momentum)

    def paper_capacity(self, delta, d, n, k, num_tokens, form):
        return extras.paper_capacity(delta, d, n, k, num_tokens, form)

    # ---------------------------------------------------------------- collectives
    def all_gather_rows(self, t, group):
        return collectives.all_gather_rows(t, group)

    def all_reduce(self, t, group):
        return collectives.all_reduce_(t.clone(), group) if group.size > 1 else t

    def all_to_all(self, x, send, recv, group, counter, stage):
        return collectives.all_to_all(x, send, recv, group, counter, stage)

    def all_to_all_start(self, x, send, recv, group, counter, stage):
        return collectives.all_to_all_start(x, send, recv, group, counter, stage)

    # ---------------------------------------------------------------- moving copies
    def copy_positions(self, order, num_kept, num_copies):
        return copy_positions(order, num_kept, num_copies)

    def permute_copies(self, x, row_token, pos, kept: Optional[torch.Tensor]):
        return PermuteTokens.apply(x, row_token, pos, kept, self.fuse)

    def combine_copies(self, rows, weight, pos, kept, row_token, row_copy):
        if kept is not None:
            weight = weight * kept  # dropped copies weigh nothing
        return UnpermuteTokens.apply(rows, weight.to(rows.dtype), pos, row_token, row_copy, self.fuse)

    def scatter_add_rows(self, rows, weight, token, num_tokens):
        weighted = rows * weight[:, None].to(rows.dtype)
        return rows.new_zeros(num_tokens, rows.shape[1]).index_add(0, token, weighted)
