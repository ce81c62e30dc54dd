"""Collectives the dispatcher needs: an uneven all-to-all with its own backward and byte counters, all-gather
and all-reduce.

Ascend: the native uneven all-to-all (HCCL AlltoAllV through
``mindspore.communication.comm_func.all_to_all_single_with_output_shape``), AllGather and AllReduce on the
sub-group. Everywhere else (CPU), MindSpore 2.10 has no AlltoAll, AlltoAllV, Send or Recv, runs AllGather on
the world group only (``AllGather only support mccl_world_group on CPU``) and without a backward, and
AllReduce for float32 only (measured under msrun). There an all-to-all is built exactly from one world
AllGather: every rank pads its send buffer to the largest one in the world, all ranks gather all buffers,
and each keeps the rows addressed to it. Its backward is the same construction with the routes reversed,
i.e. an all-to-all with the split sizes swapped, as on Ascend. Because the CPU path always uses the world
group, every rank of the world must run the same sequence of collectives (true of SPMD MoE layers).

Every all-to-all adds the bytes of the *logical* exchange (what this rank sends to other ranks of its node
and of other nodes) to a :class:`TrafficCounter`, so the counters equal the numpy plan's predictions on
both paths, not the padded bytes the CPU emulation moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, cast

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from locmoe.parallel.traffic import TrafficCounter  # noqa: F401 (re-exported: the backends' counters are this one)


@dataclass(frozen=True)
class Group:
    """A communication group with the ranks it spans, their nodes, and this rank's place in it."""

    name: Optional[str]  # the group's name for create_group / HCCL; None for a group of one
    ranks: tuple  # EP ranks of the members, in group order
    nodes: tuple  # node of each member
    my_index: int
    world_ranks: tuple = (0,)  # global ranks of the members (the CPU path gathers over the world)
    world_size: int = 1

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def my_world_rank(self) -> int:
        return self.world_ranks[self.my_index]


def _hccl_name(group: Group) -> str:
    """The name of a group of more than one rank (only a group of one has none)."""
    assert group.name is not None, "a group of one has no communicator"
    return group.name


def native_collectives() -> bool:
    """True where MindSpore has the uneven all-to-all and sub-group collectives (Ascend)."""
    return ms.get_context("device_target") == "Ascend"


# ----------------------------------------------------------------------------- all-to-all


class _AllToAll(nn.Cell):
    """Uneven all-to-all of the rows of x; its bprop is the all-to-all with the split sizes swapped."""

    def __init__(
        self,
        send: list,
        recv: list,
        group: Group,
        counter: Optional[TrafficCounter],
        stage: str,
        async_op: bool = False,
    ):
        super().__init__()
        self.send, self.recv, self.group, self.counter, self.stage = send, recv, group, counter, stage
        self.async_op = async_op  # Ascend: launch and return; ``wait`` before the output is read
        self.routes = None  # CPU: [world, world] rows each rank sends to each rank, found in construct
        self.handle = None

    def construct(self, x):
        out, self.routes, self.handle = _exchange(
            x, self.send, self.recv, self.group, self.counter, self.stage, async_op=self.async_op
        )
        return out

    def wait(self) -> None:
        if self.handle is not None:
            self.handle.wait()
            self.handle = None

    def bprop(self, x, out, dout):
        routes = None if self.routes is None else self.routes.T
        grad, _, _ = _exchange(dout, self.recv, self.send, self.group, self.counter, self.stage + ":grad", routes)
        return (grad,)


def _exchange(
    x: Tensor,
    send: list,
    recv: list,
    group: Group,
    counter: Optional[TrafficCounter],
    stage: str,
    routes: Optional[np.ndarray] = None,
    async_op: bool = False,
    autodiff: bool = False,
) -> tuple:
    """Send ``send[i]`` rows of x to member i, receive ``recv[i]`` from member i; returns (rows, routes, the
    handle of an asynchronous launch or None)."""
    row_bytes = math.prod(x.shape[1:]) * x.itemsize
    if counter is not None:
        counter.add_rows(send, row_bytes, group, stage)
    if group.size == 1:
        return x, None, None
    if native_collectives():
        out, handle = _native_all_to_all(x, send, recv, group, async_op)
        return out, None, handle
    if routes is None:
        routes = _world_routes(send, group)
    return _cpu_all_to_all(x, recv, group, routes, stage, autodiff), routes, None


def _native_all_to_all(x: Tensor, send: list, recv: list, group: Group, async_op: bool) -> tuple[Tensor, object]:
    """HCCL AlltoAllV (Ascend only; this path cannot run on CPU): (rows, CommHandle or None)."""
    from mindspore.communication import comm_func

    native = getattr(comm_func, "all_to_all_single_with_output_shape", None)
    if native is None:
        raise RuntimeError(
            f"MindSpore {ms.__version__} has no communication.comm_func."
            "all_to_all_single_with_output_shape, which the Ascend dispatch uses; install "
            "mindspore>=2.10,<2.11 (`pip install 'locmoe[mindspore]'`)"
        )
    shape = (int(sum(recv)), *x.shape[1:])
    return native(
        shape, x, output_split_sizes=list(recv), input_split_sizes=list(send), group=group.name, async_op=async_op
    )


def _world_routes(send: list, group: Group) -> np.ndarray:
    """[world, world] rows every rank sends to every rank in this call (one small world all-gather)."""
    row = np.zeros(group.world_size, dtype=np.int64)
    row[list(group.world_ranks)] = send
    return cast(Tensor, ops.AllGather()(Tensor(row[None]))).asnumpy()  # a primitive's call is typed Optional


def _cpu_all_to_all(x: Tensor, recv: list, group: Group, routes: np.ndarray, stage: str, autodiff: bool) -> Tensor:
    """The exact all-to-all from one world collective: every rank's send buffer, padded to the world's largest,
    reaches every rank, and each keeps the rows sent to it. A sender's buffer lists its rows member by member
    in group order; the rows for me start after those it sends to the members before me.

    The collective is an AllGather (:func:`_gather_world`), or with
    ``autodiff`` one AllReduce (a sum) of each rank's buffer in its own block, zeros elsewhere: the same rows
    (adding zeros is exact), and MindSpore differentiates it itself (AllReduce's gradient is an AllReduce,
    which CPU has; AllGather's is a ReduceScatter, which it has not). That form moves world-size times the
    bytes: the CPU emulation of an exchange inside a traced graph, never the Ascend path."""
    me, members = group.my_world_rank, list(group.world_ranks)
    got = routes[members, me]
    if got.tolist() != list(recv):
        raise RuntimeError(
            f"all-to-all '{stage}': rank {me} expects {list(recv)} rows from ranks {members}, "
            f"but they send {got.tolist()}: the split sizes disagree across ranks"
        )
    width = max(1, int(routes.sum(axis=1).max()))
    world = _summed_blocks(x, group, width) if autodiff else _gather_world(x, width)
    before = group.my_index
    index = [s * width + int(routes[s, members[:before]].sum()) + np.arange(routes[s, me]) for s in members]
    rows = ops.gather(world, Tensor(np.concatenate(index).astype(np.int64)), 0)  # from [world * width, ...]
    return rows if rows.dtype == x.dtype else rows.astype(x.dtype)


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """x followed by zero rows up to ``rows`` rows."""
    pad = rows - x.shape[0]
    return ops.cat([x, ops.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x


def _summed_blocks(x: Tensor, group: Group, width: int) -> Tensor:
    """[world * width, ...]: every rank's x in its block of ``width`` rows, by one world AllReduce (CPU's takes
    float32 only)."""
    me, x = group.my_world_rank, x if x.dtype == ms.float32 else x.astype(ms.float32)
    mine = ops.cat([ops.zeros((me * width, *x.shape[1:]), ms.float32), x]) if me else x
    return cast(Tensor, ops.AllReduce()(_pad_rows(mine, group.world_size * width)))


def all_to_all(
    x: Tensor,
    send_splits: list,
    recv_splits: list,
    group: Group,
    counter: Optional[TrafficCounter] = None,
    stage: str = "a2a",
    autodiff: bool = False,
) -> Tensor:
    """Send ``send_splits[i]`` rows of ``x`` to member i; receive ``recv_splits[i]`` rows from member i.

    Differentiable: the gradient travels back along the same routes. ``autodiff``: inside a traced graph
    (whose autodiff skips the Cell's bprop) the CPU exchange takes its AllReduce form (:func:`_cpu_all_to_all`);
    its backward's bytes are then not counted.
    """
    send, recv = [int(s) for s in send_splits], [int(r) for r in recv_splits]
    if group.size == 1 or (autodiff and not native_collectives()):
        return _exchange(x, send, recv, group, counter, stage, autodiff=autodiff)[0]
    return _AllToAll(send, recv, group, counter, stage)(x)


def all_to_all_start(
    x: Tensor,
    send_splits: list,
    recv_splits: list,
    group: Group,
    counter: Optional[TrafficCounter] = None,
    stage: str = "a2a",
    autodiff: bool = False,
) -> Callable[[], Tensor]:
    """Start an all-to-all and return ``finish`` (→ the received rows), as the torch backend does.

    On Ascend the exchange is launched with ``async_op`` and ``finish`` waits on its handle, so the experts of
    one chunk run while the next chunk travels (``moe.overlap_chunks``). On CPU, PyNative has no asynchronous
    collective: the exchange runs at once and ``finish`` hands the result over (``autodiff``: see
    :func:`all_to_all`).
    """
    send, recv = [int(s) for s in send_splits], [int(r) for r in recv_splits]
    if group.size == 1 or not native_collectives():
        out = all_to_all(x, send, recv, group, counter, stage, autodiff)
        return lambda: out
    cell = _AllToAll(send, recv, group, counter, stage, async_op=True)
    out = cell(x)

    def finish() -> Tensor:
        cell.wait()
        return out

    return finish


# ----------------------------------------------------------------------------- gather / reduce


def all_gather_rows(x: Tensor, group: Group) -> Tensor:
    """Concatenate every member's ``x`` (equal shapes within the group) along dim 0, in group order.

    Not differentiable. Booleans travel as int32 (AllGather has no bool kernel on CPU).
    """
    if group.size == 1:
        return x
    if x.dtype == ms.bool_:
        return all_gather_rows(x.astype(ms.int32), group).astype(ms.bool_)
    x = cast(Tensor, ops.stop_gradient(x))  # typed Optional
    if native_collectives():
        return cast(Tensor, ops.AllGather(_hccl_name(group))(x))
    if group.size == group.world_size:
        return _gather_world(x, x.shape[0])
    # other groups may hold other shapes: pad every rank to the world's largest block first
    rows = _gather_world(Tensor(np.array([x.shape[0]], dtype=np.int64)), 1).asnumpy()
    width = int(rows.max())
    blocks = _gather_world(x, width).reshape(group.world_size, width, *x.shape[1:])
    return blocks[Tensor(np.array(group.world_ranks, dtype=np.int64))][:, : x.shape[0]].reshape(-1, *x.shape[1:])


def _gather_world(x: Tensor, width: int) -> Tensor:
    """World AllGather of x padded to ``width`` rows (at least one: AllGather rejects zero rows)."""
    out = cast(Tensor, ops.AllGather()(_pad_rows(x, max(1, width))))
    if width == 0:
        return out[:0]
    return out


def all_reduce(x: Tensor, group: Group) -> Tensor:
    """Sum of every member's ``x`` (a new tensor). Not differentiable.

    On CPU it is a gather and a sum in group order: exact for every dtype (CPU AllReduce takes float32
    only) and the same bits on every rank.
    """
    if group.size == 1:
        return x
    if native_collectives():
        return cast(Tensor, ops.AllReduce(ops.ReduceOp.SUM, _hccl_name(group))(ops.stop_gradient(x)))
    return all_gather_rows(x.expand_dims(0), group).sum(axis=0)
