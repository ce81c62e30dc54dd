"""The op surface a backend provides to the MoE layer's shared control flow (``locmoe.moe``).

Everything framework-specific the router, capacity planner, dispatcher and layer need is one of these
methods; the rest of their code is arithmetic and indexing that torch and MindSpore tensors share (``+ * / //
== & ~``, ``reshape``, ``t[a:b]``, ``t[:, None]``, ``shape``). Each backend implements it once
(``backends/torch/moe_ops.py``, ``backends/mindspore/moe_ops.py``), mostly by naming its kernels: the routing
kernels are the twins of the numpy functions of the same name in ``locmoe.routing`` and are tested against them.

Dtypes are named ("int64", "float32", "float64", "bool"); ``like`` is a tensor whose device the new one takes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from locmoe.moe.records import Tensor
from locmoe.parallel.traffic import TrafficCounter


class MoEOps(Protocol):
    # ---------------------------------------------------------------- tensors
    def zeros(self, shape: tuple, dtype: str, like: Tensor) -> Tensor: ...
    def ones(self, shape: tuple, dtype: str, like: Tensor) -> Tensor: ...
    def full(self, shape: tuple, value, dtype: str, like: Tensor) -> Tensor: ...
    def zeros_like(self, t: Tensor) -> Tensor: ...
    def ones_like(self, t: Tensor, dtype: Optional[str] = None) -> Tensor: ...
    def full_like(self, t: Tensor, value) -> Tensor: ...
    def arange(self, n: int, like: Tensor) -> Tensor:
        """int64 0..n-1"""

    def index_tensor(self, values: np.ndarray, like: Tensor) -> Tensor:
        """host integers → an int64 tensor on ``like``'s device"""

    def to_host(self, t) -> np.ndarray:
        """a tensor (or a Python number) → numpy: a host sync on an accelerator"""
        ...

    def same_device(self, a: Tensor, b: Tensor) -> bool: ...
    def cast(self, t: Tensor, dtype: str) -> Tensor: ...
    def cast_like(self, t: Tensor, other: Tensor) -> Tensor: ...
    def detach(self, t: Tensor) -> Tensor: ...
    def where(self, cond: Tensor, a: Tensor, b: Tensor) -> Tensor: ...
    def masked_fill(self, t: Tensor, mask: Tensor, value: float) -> Tensor: ...
    def relu(self, t: Tensor) -> Tensor: ...
    def matmul(self, a: Tensor, b: Tensor) -> Tensor: ...
    def sum(self, t: Tensor) -> Tensor: ...
    def mean(self, t: Tensor) -> Tensor: ...
    def clamp_min(self, t: Tensor, low) -> Tensor: ...
    def expand(self, scalar: Tensor, n: int) -> Tensor:
        """a 0-d tensor → [n] copies of it"""

    def nanmax(self, t: Tensor) -> Tensor:
        """0-d max over the non-NaN entries (-inf when all are NaN)"""

    def all_nan(self, t: Tensor) -> Tensor: ...
    def stack(self, ts: Sequence[Tensor], axis: int = 0) -> Tensor: ...
    def cat(self, ts: Sequence[Tensor]) -> Tensor: ...
    def cumsum(self, t: Tensor) -> Tensor:
        """along dim 0"""

    def transpose(self, t: Tensor) -> Tensor:
        """of a 2-D tensor"""

    def count_true(self, mask: Tensor) -> Tensor:
        """int64 number of True entries along the last dim"""

    def pad_row(self, t: Tensor) -> Tensor:
        """[n, d] → [n + 1, d], a zero row appended (differentiable)"""

    def split_rows(self, t: Tensor, sizes: list) -> list: ...
    def take(self, t: Tensor, index: Tensor) -> Tensor:
        """t[index] of a 1-D t"""

    def take_rows(self, t: Tensor, index: Tensor) -> Tensor:
        """t[index] along dim 0, differentiable; empty index and rows allowed"""

    def take_along_rows(self, t: Tensor, index: Tensor) -> Tensor:
        """[T, k] t[i, index[i, j]]"""

    def repeat_interleave(self, t: Tensor, repeats: int) -> Tensor: ...
    def nonzero(self, mask: Tensor) -> Tensor:
        """1-D int64 indices where ``mask`` holds"""

    def argsort_stable(self, key: Tensor) -> Tensor:
        """int64 indices sorting a 1-D integer key ascending, ties in index order"""

    def counts_of(self, index: Tensor, n: int, where: Optional[Tensor] = None) -> Tensor:
        """[n] int64 occurrences of each value of ``index`` (counting only ``where``), no host sync"""

    # ---------------------------------------------------------------- state, checks, execution
    def assign_(self, state: Tensor, value: Tensor) -> None:
        """write ``value`` into the state tensor (a buffer / Parameter) in place"""

    def update_selection_bias_(self, router, load: Tensor) -> None:
        """loss-free balancing after a training call: router.selection_bias += γ · sign(mean(load) − load) in
        place, γ = moe.router.bias_update_rate; evaluation leaves it alone"""

    def check_index_range(self, t: Tensor, n: int, what: str, why: str = "") -> None:
        """a ValueError "{what} must lie in [0, n){why}, got [lo, hi]" unless 0 <= t < n (where checking costs
        no host sync)"""

    def compute_dtype(self, x: Tensor) -> Tensor:
        """x in the dtype the experts and the token movement run in (autocast's, where it is on)"""

    def phase(self, name: str) -> AbstractContextManager:
        """a profiler label around a phase of the layer"""
        ...

    # ---------------------------------------------------------------- routing kernels (numpy twins in locmoe.routing)
    def grap_scores(self, x: Tensor, num_experts: int) -> Tensor: ...
    def affinities(self, scoring: str, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(affinity the router selects and weighs by, p_t of the losses, log p_t), [T, E] float32"""
        ...

    def gate_angles(self, x: Tensor, gate_weight: Tensor) -> Tensor: ...
    def basis_angles(self, scores: Tensor) -> Tensor: ...
    def cosine_deviation(self, x: Tensor, columns: Tensor) -> Tensor: ...
    def top_k(self, p: Tensor, k: int) -> Tensor: ...
    def selection_scores(self, affinity: Tensor, bias: Optional[Tensor], allowed: Optional[Tensor]) -> Tensor: ...
    def intra_node_first(self, probs: Tensor, k: int, local: Tensor, rho: float) -> Tensor: ...
    def node_limited_top_k(
        self, sel: Tensor, k: int, num_nodes: int, node_table: Tensor, node_of_expert: Tensor, how: str
    ) -> Tensor: ...
    def combine_weights(self, chosen: Tensor) -> Tensor: ...
    # probs [..., T, E], expert_ids [..., T, k] -> [...]: one loss per leading block of tokens
    def load_balance_loss(self, probs: Tensor, expert_ids: Tensor, num_experts: int) -> Tensor: ...
    def locality_loss(self, log_probs: Tensor, local: Tensor) -> Tensor: ...
    def batch_locality_loss(
        self, probs: Tensor, local: Tensor, allowed: Optional[Tensor], blocks: int, smoothing: float
    ) -> Tensor: ...
    def router_z_loss(self, logits: Tensor) -> Tensor: ...
    def expert_choice(self, probs: Tensor, capacity: int) -> tuple[Tensor, Tensor]: ...
    def admit(self, expert: Tensor, prob: Tensor, locality: Tensor, capacity: Tensor) -> Tensor: ...

    # ---------------------------------------------------------------- capacity kernels
    def expert_angles(
        self, angles: Tensor, expert: Tensor, num_experts: int, quantile: float
    ) -> tuple[Tensor, Tensor]: ...
    def update_angle_ema(self, ema: Tensor, delta: Tensor, seen: Tensor, momentum: float) -> Tensor: ...
    def quantile_cone_counts(
        self,
        copy_angle: Tensor,
        copy_expert: Tensor,
        num_experts: int,
        ema: Tensor,
        token_angles: Tensor,
        quantile: float,
        momentum: float,
    ) -> tuple[Tensor, Tensor]:
        """(the updated angle average, this rank's tokens inside each expert's cone [E] float64)"""
        ...

    def quantile_capacity(
        self, inside: Tensor, ema: Tensor, k: int, num_tokens: int, slack: float, floor: int, factor_cap: int
    ) -> tuple[Tensor, Tensor]:
        """([E] capacities, the bound before the floor) from the group's inside counts"""
        ...

    def unseen_fallback(self, capacity: Tensor, ema: Tensor, factor_cap: int) -> Tensor: ...
    def update_paper_delta(
        self, state: Tensor, delta: Tensor, seen: Tensor, schedule: str, momentum: float
    ) -> Tensor: ...
    def paper_capacity(self, delta: Tensor, d: int, n: int, k: int, num_tokens: int, form: str) -> Tensor: ...

    # ---------------------------------------------------------------- collectives (a group of one: identities)
    def all_gather_rows(self, t: Tensor, group) -> Tensor: ...
    def all_reduce(self, t: Tensor, group) -> Tensor:
        """the sum over the group, a new tensor"""

    def all_to_all(
        self, x: Tensor, send: list, recv: list, group, counter: Optional[TrafficCounter], stage: str
    ) -> Tensor: ...
    def all_to_all_start(
        self, x: Tensor, send: list, recv: list, group, counter: Optional[TrafficCounter], stage: str
    ) -> Callable[[], Tensor]: ...

    # ---------------------------------------------------------------- moving copies
    def copy_positions(self, order: Tensor, num_kept: int, num_copies: int) -> Tensor:
        """[C] the row of each copy in a buffer holding ``order[:num_kept]``; other copies get any row"""

    def permute_copies(self, x: Tensor, row_token: Tensor, pos: Tensor, kept: Optional[Tensor]) -> Tensor:
        """rows[r] = x[row_token[r]], differentiable"""

    def combine_copies(
        self, rows: Tensor, weight: Tensor, pos: Tensor, kept: Optional[Tensor], row_token: Tensor, row_copy: Tensor
    ) -> Tensor:
        """y[t] = Σ_j w[t, j] · kept[t, j] · rows[pos[t, j]], in choice order"""

    def scatter_add_rows(self, rows: Tensor, weight: Tensor, token: Tensor, num_tokens: int) -> Tensor:
        """y[t] = Σ_{r: token[r] = t} weight[r] · rows[r] (expert choice)"""
