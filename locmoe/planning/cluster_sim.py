"""Projected training step time of an MoE model on N nodes × G devices, for LocMoE and the baselines, from
routing statistics and a calibration of the devices and links.

Per MoE layer and device (T tokens per device, k copies each, fractions from :class:`RoutingStats`):
- **dense part** (attention + projections): ``T·(8d² + 4·s·d)`` FLOP forward at the dense GEMM rate;
- **experts**: the busiest device computes ``T·k·kept·max_load`` copies × ``6·d·f`` FLOP (SwiGLU: three
  matmuls) at the grouped-GEMM rate (``padded``: every local expert runs at capacity instead);
- **all-to-all**, dispatch and combine (bytes per copy ``2d``): *flat* (GShard/Switch) sends in-node
  copies over the node link and cross-node copies over the NIC at the same time, with all N·G − G remote
  ranks as peers; *hierarchical* (LocMoE) first moves every copy that leaves the device inside the node
  (cross-node ones to the relay with the destination's local index), then only the cross-node copies
  among the N − 1 other nodes. Link model ``t = α + peers·α_peer + bytes/β``: α and the NVLink β fitted
  to the measured all-to-all curve (NCCL between 2×H200, torch 2.11: 28/223/446 GB/s at 1/16/128 MB gives α ≈ 37 µs,
  β ≈ 511 GB/s), the NIC's β and α_peer stated (:class:`Calibration`).
Training = forward + backward: compute × 3, all-to-alls × 2. With ``overlap_chunks`` c > 1, expert compute
and all-to-all of chunks overlap: ``max(a, b) + min(a, b) / c``. Gradient all-reduce and the optimiser are
the same for every router and are left out.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from locmoe.planning.errors import PlanningError

MB = 1e6


@dataclass
class Calibration:
    """Device and link speeds. Defaults: measured on 2×H200 (torch 2.11, 2026-11-23) except the NIC, which is stated."""

    dense_tflops: float = 760.0  # bf16 dense GEMM
    grouped_tflops: float = 490.0  # torch._grouped_mm, E=64, d=2048, f=1408, 32k tokens
    padded_tflops: float = 234.0  # padded bmm at max load, same shape
    a2a_sizes_mb: tuple = (1.0, 16.0, 128.0)  # NCCL all-to-all message per peer ...
    a2a_gbps: tuple = (28.0, 223.0, 446.0)  # ... and the bandwidth measured at it (intra-node)
    nic_gbps: float = 50.0  # inter-node, per device: one 400 Gb/s NIC per GPU (stated)
    nic_peer_latency_us: float = 2.0  # per remote peer of an all-to-all (RDMA message; stated)
    source: str = "measured on 2xH200 (torch 2.11, 2026-11-23); NIC stated: 400 Gb/s per GPU, 2 us per peer"

    @staticmethod
    def from_json(path: str | Path) -> "Calibration":
        """Defaults overridden by the fields of a JSON object (e.g. written by a later GPU benchmark)."""
        path = Path(path)
        if not path.is_file():
            raise PlanningError(f"calibration {path} not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PlanningError(f"calibration {path} is not valid JSON ({err})") from None
        names = {f.name for f in dataclasses.fields(Calibration)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PlanningError(f"calibration {path}: unknown fields {unknown}; allowed: {sorted(names)}")
        given: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}  # checked below
        cal = Calibration(**given)
        for f in dataclasses.fields(Calibration):
            value, listed = getattr(cal, f.name), isinstance(f.default, tuple)
            values = value if listed and isinstance(value, tuple) else (value,)
            positive = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)
            if f.name != "source" and (listed != isinstance(value, tuple) or not values or not positive):
                what = "a list of positive numbers" if listed else "a positive number"
                raise PlanningError(f"calibration {path}: {f.name} must be {what}, got {value!r}")
        if len(cal.a2a_sizes_mb) != len(cal.a2a_gbps) or not cal.a2a_sizes_mb:
            raise PlanningError(f"calibration {path}: a2a_sizes_mb and a2a_gbps must be equally long, non-empty")
        return cal

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def alpha_beta(self) -> tuple[float, float]:
        """(seconds per call, bytes/s) of ``t = α + bytes/β`` fitted by least squares to the all-to-all
        curve (time = size / bandwidth at each measured size)."""
        sizes = np.asarray(self.a2a_sizes_mb) * MB
        times = sizes / (np.asarray(self.a2a_gbps) * 1e9)
        if len(sizes) == 1:
            return 0.0, float(sizes[0] / times[0])
        (alpha, inv_beta), *_ = np.linalg.lstsq(np.stack([np.ones_like(sizes), sizes], axis=1), times, rcond=None)
        return max(float(alpha), 0.0), 1.0 / max(float(inv_beta), 1e-30)

    def intra_time(self, total_bytes: float) -> float:
        """One all-to-all inside a node sending ``total_bytes`` per device (NVLink, peers in parallel)."""
        alpha, beta = self.alpha_beta()
        return alpha + total_bytes / beta if total_bytes > 0 else 0.0

    def inter_time(self, total_bytes: float, peers: int) -> float:
        """One all-to-all across nodes: the NIC's bandwidth, the call's fixed cost, a cost per peer."""
        if total_bytes <= 0:
            return 0.0
        alpha, _ = self.alpha_beta()
        return alpha + peers * self.nic_peer_latency_us * 1e-6 + total_bytes / (self.nic_gbps * 1e9)


@dataclass
class RoutingStats:
    """Where a router's token copies go: shares of kept copies, dropped share, busiest device ÷ mean."""

    on_rank: float
    in_node: float
    cross_node: float
    dropped: float = 0.0
    max_load: float = 1.0
    capacity_factor: float = 1.25  # for the padded expert kernel
    top_k: int | None = None  # copies per token; None = the model's

    @staticmethod
    def from_plan(plan) -> "RoutingStats":
        """From a :class:`locmoe.routing.DispatchPlan` (the numpy reference router's output)."""
        frac = plan.locality_fractions()
        per_rank = np.bincount(plan.dst_rank[plan.kept], minlength=plan.world_size)
        mean = per_rank.mean() if per_rank.sum() else 1.0
        return RoutingStats(
            frac["on_rank"],
            frac["in_node"],
            frac["cross_node"],
            plan.dropped() / max(len(plan.kept), 1),
            float(per_rank.max() / mean),
            top_k=int(round(len(plan.kept) / max(plan.num_tokens, 1))),
        )


@dataclass
class MoEModel:
    d_model: int = 2048
    d_expert: int = 1408
    num_experts: int = 128
    top_k: int = 2
    moe_layers: int = 24
    seq_len: int = 2048
    tokens_per_device: int = 8192


@dataclass
class System:
    """How one router is run: its statistics, the all-to-all scheme and the expert kernel."""

    name: str
    stats: RoutingStats
    dispatch: str = "hierarchical"  # or "flat"
    expert_kernel: str = "grouped"  # or "padded"
    overlap_chunks: int = 1


def layer_times(model: MoEModel, sys: System, cal: Calibration, nodes: int, per_node: int) -> dict:
    """Forward seconds of one MoE layer on the busiest device: dense, expert, all-to-all (dispatch+combine)."""
    d, T, s = model.d_model, model.tokens_per_device, sys.stats
    k = s.top_k or model.top_k
    dense = T * (8 * d * d + 4 * model.seq_len * d) / (cal.dense_tflops * 1e12)
    kept = 1.0 - s.dropped
    if sys.expert_kernel == "padded":
        rows, rate = T * k * s.capacity_factor, cal.padded_tflops
    else:
        rows, rate = T * k * kept * s.max_load, cal.grouped_tflops
    expert = rows * 6 * d * model.d_expert / (rate * 1e12)
    copy = 2.0 * d
    b_in, b_x = T * k * kept * s.in_node * copy, T * k * kept * s.cross_node * copy
    G, N = per_node, nodes
    if sys.dispatch == "flat":  # NVLink and NIC parts run at once; every remote rank a peer
        a2a = max(cal.intra_time(b_in), cal.inter_time(b_x, N * G - G))
    elif sys.dispatch == "hierarchical":  # stage 1 in the node (incl. relaying), stage 2 across nodes
        stage1 = b_in + b_x * (1 - 1 / G)
        a2a = cal.intra_time(stage1) + cal.inter_time(b_x, N - 1)
    else:
        raise PlanningError(f"system {sys.name}: dispatch {sys.dispatch!r}; allowed: flat, hierarchical")
    return {"dense": dense, "expert": expert, "all_to_all": 2 * a2a}


def step_time(model: MoEModel, sys: System, cal: Calibration, nodes: int, per_node: int) -> dict:
    """Training step seconds (forward + backward over every MoE layer) and its parts."""
    t = layer_times(model, sys, cal, nodes, per_node)
    compute, comm = 3 * t["expert"], 2 * t["all_to_all"]
    c = sys.overlap_chunks
    moe = compute + comm if c <= 1 else max(compute, comm) + min(compute, comm) / c
    layer = 3 * t["dense"] + moe
    return {
        "system": sys.name,
        "k": sys.stats.top_k or model.top_k,
        "dispatch": sys.dispatch,
        "cross_node": sys.stats.cross_node,
        "max_load": sys.stats.max_load,
        "dropped": sys.stats.dropped,
        "dense_ms": 3 * t["dense"] * model.moe_layers * 1e3,
        "expert_ms": compute * model.moe_layers * 1e3,
        "all_to_all_ms": comm * model.moe_layers * 1e3,
        "step_ms": layer * model.moe_layers * 1e3,
    }
