"""The expert pipeline of one MoE layer call: per chunk, dispatch all-to-all → local experts → combine
all-to-all, issued in the order of ``locmoe.inference.pipeline_plan.comm_order``.

The host issues X_i (compute) right before C_i (its combine), and every dispatch in the plan's order, so
that on CUDA the communication stream holds D0 D1 C0 D2 C1 ... while the compute stream holds X0 X1 ...:
chunk i's experts run while chunk i+1 arrives and chunk i-1 returns. Every chunk's split sizes were known
before the first one was sent (one host sync per layer, in the dispatcher's plan), so nothing inside the
pipeline waits for the host.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from backends.torch.experts import GroupedExperts
from backends.torch.inference.expert_kernels import run_experts
from backends.torch.inference.lanes import Lanes
from backends.torch.inference.timing import StageClock
from locmoe.inference.pipeline_plan import comm_order
from locmoe.moe.records import ChunkDispatch, CopyLayout


def _dispatch_start(rows: torch.Tensor, d: ChunkDispatch):
    if d.exchange is None:
        return lambda: rows
    return d.exchange.dispatch(rows)


def _combine_start(rows: torch.Tensor, d: ChunkDispatch):
    if d.exchange is None:
        return lambda: rows
    return d.exchange.combine(rows)


def run_pipeline(
    experts: GroupedExperts,
    send: torch.Tensor,
    layout: CopyLayout,
    loads: Sequence[np.ndarray],
    kernels: Sequence[str],
    order: str,
    lanes: Lanes,
    clock: Optional[StageClock] = None,
) -> tuple[torch.Tensor, list[str]]:
    """send: [M, d] this rank's rows in send order (chunk by chunk) -> (rows back in the same order, the
    kernel that ran per chunk). ``loads[i]`` [E_local] are chunk i's rows per local expert (host)."""
    b, chunks = layout.bounds, layout.chunks
    arriving, returning, ran = {}, {}, [""] * len(chunks)
    lanes.compute_mark(clock, "send_ready")
    for kind, i in comm_order(len(chunks), order):
        d = chunks[i]
        if kind == "D":
            rows = send[b[i] : b[i + 1]]
            arriving[i] = lanes.launch(lambda r=rows, d=d: _dispatch_start(r, d), [send], clock, f"D{i}")
            continue
        rows = arriving.pop(i).result()
        lanes.compute_mark(clock, f"X{i}:start")
        if d.recv_perm is not None:
            rows = rows.index_select(0, d.recv_perm)  # source-major -> expert-major
        y, ran[i] = run_experts(experts, rows, d.expert_counts, loads[i], kernels[i])
        if d.recv_perm is not None:
            y = y.index_select(0, d.send_perm)  # back to source-major
        lanes.compute_mark(clock, f"X{i}:end")
        returning[i] = lanes.launch(lambda y=y, d=d: _combine_start(y, d), [y], clock, f"C{i}")
    back = [returning[i].result() for i in range(len(chunks))]
    lanes.join()
    lanes.compute_mark(clock, "rows_back")
    return (back[0] if len(back) == 1 else torch.cat(back)), ran
