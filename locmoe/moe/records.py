"""What the MoE layer's steps hand each other, defined once for both backends (tensors are the backend's)."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from locmoe.parallel.traffic import TrafficCounter
from locmoe.training.layer_metrics import layer_summary

Tensor = Any  # a torch.Tensor or a mindspore.Tensor, whichever backend runs the layer


@dataclass
class RouterOutput:
    """Routing of this rank's T tokens into C copies (token, expert) with their combine weights.

    Expert choice picks its copies over the whole group's tokens, so its router gives ``probs`` and the
    dispatcher fills in the copies (``routing.expert_choice_copies``); ``token`` indexes this rank's tokens.
    """

    token: Optional[Tensor]  # [C] local token index (int64)
    expert: Optional[Tensor]  # [C]
    weight: Optional[Tensor]  # [C] combine weight (differentiable)
    prob: Optional[Tensor]  # [C] routing probability (admission priority, no gradient)
    aux_loss: Tensor  # scalar, load balance (mean over source blocks)
    locality_loss: Tensor  # scalar
    angles: Optional[Tensor]  # [T, E] float64 capacity-bound angles (rule paper: token-space cosine
    # distances), else None
    choices: Optional[Tensor]  # [T, k] token-choice routers' experts, else None
    z_loss: Optional[Tensor] = None  # scalar router z-loss (moe.router.z_loss_coef > 0), else None
    probs: Optional[Tensor] = None  # [T, E] expert choice: the probabilities its experts choose by


@dataclass
class ChunkDispatch:
    """How one chunk of this rank's kept copies moves."""

    order: Tensor  # the chunk's copies (router copy ids) in send order
    expert_counts: Tensor  # [local experts] rows each local expert processes (device int64)
    recv_perm: Optional[Tensor]  # receive buffer -> expert-major (None without an exchange)
    send_perm: Optional[Tensor]  # its inverse: expert-major -> receive buffer
    exchange: Any  # exchange.FlatAllToAll / HierarchicalAllToAll, or None (a group of one)
    dropped_tail: bool = False  # rows past sum(expert_counts) are dropped copies (no exchange)
    static_size: Optional[int] = None  # moe.dispatch_shape static: slots per local expert (S); the
    # experts run on [local experts, S, d]
    slots: Optional["StaticSlots"] = None  # static without an exchange: the slots as a view of the rows


@dataclass
class StaticSlots:
    """``moe.dispatch_shape: static`` without an exchange: every expert's rows sit in a buffer of S slots, so
    the experts run on [experts, S, d] whatever the routing (a batched GEMM of fixed shape, as Ascend's graph
    mode wants). A view of the expert-major rows: slot s holds row ``row_of_slot[s]`` (the zero row past the
    end for an empty slot), and row r returns from slot ``slot_of_row[r]`` (a zero slot for a dropped copy).
    (With an exchange, ``static_exchange.StaticExchange`` moves the rows into the slots.)"""

    row_of_slot: Tensor  # [experts * S]
    slot_of_row: Tensor  # [rows]


@dataclass
class CopyLayout:
    """This rank's copies in send order, all chunks one after the other (not to be confused with
    ``topology.ParallelLayout``, the job's ranks, or ``routing.dispatch_plan``, the numpy oracle of this)."""

    order: Tensor  # [M] router copy ids (without an exchange: all C, dropped ones last)
    bounds: list  # chunk c is rows bounds[c] .. bounds[c+1]
    kept: Optional[Tensor]  # [C] kept mask, None when every copy is kept
    chunks: list  # one ChunkDispatch per chunk
    pos: Optional[Tensor]  # [T, k] row of each copy (token-choice routers), else None
    counts: Optional[np.ndarray] = None  # [ranks src, chunks, ranks dst, local experts] kept copies (host;
    # with an exchange only)


@dataclass
class GroupStats:
    """Routing statistics of the whole expert-parallel group for one layer call (device tensors)."""

    expert_load: Tensor  # [E] copies routed before capacity
    admitted: Tensor  # [E] copies processed
    capacity: Tensor  # [E]
    capacity_bound: Optional[Any]  # the angular bound (mode bound; a 0-d tensor or an int), else None
    locality_counts: Tensor  # [3] kept copies on-rank / in-node / cross-node
    total_copies: Tensor  # scalar


class GroupView(NamedTuple):
    """Every copy of the expert-parallel group (this rank's alone where nothing is gathered), and which are mine."""

    source: Tensor  # [G] the EP rank each copy's token is on
    expert: Tensor  # [G]
    prob: Tensor  # [G] admission priority
    angle: Tensor  # [G] float64 capacity-bound angle (0 without one)
    mine: slice  # this rank's copies among them


class ExpertCapacity(NamedTuple):
    """The capacity stage's answer."""

    per_expert: Tensor  # [E] copies each expert may admit from the whole group
    bound: Optional[Any]  # the angular bound (mode bound), else None


class Admission(NamedTuple):
    """The admission stage's answer (``kept`` None: nothing is dropped)."""

    locality: Tensor  # [G] 0 on the copy's own rank, 1 in its node, 2 across nodes
    kept: Optional[Tensor]  # [G] the group's copies admitted
    kept_mine: Optional[Tensor]  # [C] this rank's


class CallPlan(NamedTuple):
    """``TokenDispatcher.plan``'s answer for one layer call."""

    routing: RouterOutput  # expert choice: with its copies filled in
    layout: CopyLayout  # this rank's copies in send order, and how each chunk moves
    stats: GroupStats  # the group's routing statistics
    kept: Tensor  # [C] bool, this rank's copies admitted


@dataclass
class MoEMetrics:
    """What one call of the layer reports (device tensors; ``summary`` reads them back when logging)."""

    stats: GroupStats
    aux_loss: Tensor
    locality_loss: Tensor
    traffic: TrafficCounter
    token: Tensor  # [C] this rank's copies: local token index,
    expert: Tensor  # [C] expert,
    kept: Tensor  # [C] admitted or dropped
    to_host: Callable[[Tensor], np.ndarray]  # the backend's device → numpy copy

    def summary(self) -> dict:
        """Plain numbers for logs (a host read of each device tensor)."""
        s, host = self.stats, self.to_host
        bound = None if s.capacity_bound is None else int(host(s.capacity_bound))
        return layer_summary(
            host(s.expert_load),
            host(s.admitted),
            host(s.capacity),
            bound,
            host(s.locality_counts),
            int(host(s.total_copies)),
            float(host(self.aux_loss)),
            float(host(self.locality_loss)),
            self.traffic,
        )


def tensor_leaves(record, is_tensor: Callable[[Any], bool]) -> list:
    """The tensors of a record (``MoEMetrics``, ``GroupStats``, nested records), field by field: what a
    compiled step returns in place of the record (a graph's outputs are tensors)."""
    out = []
    for f in fields(record):
        value = getattr(record, f.name)
        if is_dataclass(value) and not isinstance(value, TrafficCounter):
            out += tensor_leaves(value, is_tensor)
        elif is_tensor(value):
            out.append(value)
    return out


def with_leaves(record, leaves: list, is_tensor: Callable[[Any], bool]):
    """``record`` with its tensors replaced by ``leaves`` (in ``tensor_leaves`` order); ``leaves`` is consumed."""
    changes = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if is_dataclass(value) and not isinstance(value, TrafficCounter):
            changes[f.name] = with_leaves(value, leaves, is_tensor)
        elif is_tensor(value):
            changes[f.name] = leaves.pop(0)
    return replace(record, **changes)
