"""Collectives the dispatcher needs: an autograd-aware uneven all-to-all with byte counters, and all-gather.

Works on gloo (CPU), NCCL (CUDA) and HCCL (torch-npu). Every all-to-all adds the bytes this rank sends to
other ranks of its node and of other nodes to a :class:`TrafficCounter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from locmoe.parallel.traffic import TrafficCounter  # noqa: F401 (re-exported: the backends' counters are this one)


@dataclass(frozen=True)
class Group:
    """A process group with the global ranks it spans, their nodes, and this rank's place in it."""

    handle: Optional[dist.ProcessGroup]
    ranks: tuple  # EP ranks of the members, in group order
    nodes: tuple  # node of each member
    my_index: int

    @property
    def size(self) -> int:
        return len(self.ranks)


class _AllToAll(torch.autograd.Function):
    """Uneven all-to-all; its backward is the all-to-all with the split sizes swapped."""

    @staticmethod
    def forward(ctx, x, send_splits, recv_splits, group, counter, stage):
        ctx.splits = (send_splits, recv_splits)
        ctx.group, ctx.counter, ctx.stage = group, counter, stage
        return _exchange(x, send_splits, recv_splits, group, counter, stage)

    @staticmethod
    def backward(ctx, grad):
        send, recv = ctx.splits
        return _exchange(grad, recv, send, ctx.group, ctx.counter, ctx.stage + ":grad"), None, None, None, None, None


def _exchange(
    x: torch.Tensor,
    send: list,
    recv: list,
    group: Group,
    counter: Optional[TrafficCounter],
    stage: str,
    handle: Optional["Handle"] = None,
) -> torch.Tensor:
    """The all-to-all itself. With a ``handle`` it is launched asynchronously: the output must not be read
    before ``handle.wait()`` (on CUDA that lets the compute stream run on while NCCL moves the data)."""
    row_bytes = math.prod(x.shape[1:]) * x.element_size()
    if counter is not None:
        counter.add_rows(send, row_bytes, group, stage)
    if group.size == 1:
        return x.clone()
    out = x.new_empty((sum(recv), *x.shape[1:]))
    work = dist.all_to_all_single(
        out,
        x.contiguous(),
        output_split_sizes=recv,
        input_split_sizes=send,
        group=group.handle,
        async_op=handle is not None,
    )
    if handle is not None:
        handle.work = work
    return out


class Handle:
    """An all-to-all in flight."""

    work: Any = None  # the c10d Work of the call once started

    def wait(self) -> None:
        if self.work is not None:
            self.work.wait()
            self.work = None


class _AllToAllStart(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, send_splits, recv_splits, group, counter, stage, handle):
        ctx.splits = (send_splits, recv_splits)
        ctx.group, ctx.counter, ctx.stage = group, counter, stage
        return _exchange(x, send_splits, recv_splits, group, counter, stage, handle)

    @staticmethod
    def backward(ctx, grad):
        send, recv = ctx.splits
        out = _exchange(grad, recv, send, ctx.group, ctx.counter, ctx.stage + ":grad")
        return out, None, None, None, None, None, None


class _Wait(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, handle):
        handle.wait()
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def all_to_all_start(
    x: torch.Tensor,
    send_splits: list,
    recv_splits: list,
    group: Group,
    counter: Optional[TrafficCounter] = None,
    stage: str = "a2a",
):
    """Launch an all-to-all and return ``finish``: calling it waits and returns the received rows."""
    handle = Handle()
    out = _AllToAllStart.apply(
        x, list(map(int, send_splits)), list(map(int, recv_splits)), group, counter, stage, handle
    )
    return lambda: _Wait.apply(out, handle)


def all_to_all(
    x: torch.Tensor,
    send_splits: list,
    recv_splits: list,
    group: Group,
    counter: Optional[TrafficCounter] = None,
    stage: str = "a2a",
) -> torch.Tensor:
    """Send ``send_splits[i]`` rows of ``x`` to member i; receive ``recv_splits[i]`` rows from member i.

    Differentiable: the gradient travels back along the same routes.
    """
    return _AllToAll.apply(x, list(map(int, send_splits)), list(map(int, recv_splits)), group, counter, stage)


def all_gather_rows(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Concatenate every member's ``x`` (equal shapes) along dim 0, in group order. Not differentiable."""
    if group.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(group.size)]
    dist.all_gather(parts, x.contiguous(), group=group.handle)
    return torch.cat(parts)


def all_reduce_(x: torch.Tensor, group: Group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if group.size > 1:
        dist.all_reduce(x, op=op, group=group.handle)
    return x
