"""The modeled time of a whole training step — every part of it, not only the MoE layers — on a target
cluster, from one run's measured routing statistics: what time to quality (``scripts/bench/time_to_quality.py``)
turns a run's steps into.

Per device and optimiser step (T tokens per micro-batch, A micro-batches; PaLM's FLOP count, no causal halving):
- **dense work** at the rate a real model reaches (``Target.dense_tflops``: measured model FLOP/s, not the GEMM
  peak): per token and layer ``8d² + 4·s·d`` (attention), ``6·d·d_ff`` (a dense block's SwiGLU), ``2·d·E``
  (a router), and ``2·d·V`` once (the LM head); training = 3 × forward;
- **experts and all-to-alls** of each MoE layer: :func:`locmoe.planning.cluster_sim.layer_times` with the
  run's statistics (busiest device, kept copies, on-rank / in-node / cross-node shares), forward + backward;
- **gradient all-reduce** of the replicated (dense) parameters over the N·G data-parallel ranks as a ring:
  ``2·(P−1)/P · bytes`` at the NIC's rate across nodes (at the node link's within one node); expert gradients
  over the ranks holding the same experts (none when every expert lives once);
- **AdamW**: ``adam_bytes_per_param`` of HBM traffic per local parameter at ``Target.hbm_gbps``;
- **sequence placement** (``data.placement``): ``affinity`` runs the blocks below the first MoE layer and its
  attention once more, forward only, at the dense rate; ``embedding`` only the first gate on the embeddings.
Nothing overlaps (a conservative bound on the router's gain: the parts every router shares are never hidden).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from locmoe.planning.cluster_sim import Calibration, MoEModel, RoutingStats, System, layer_times


@dataclass(frozen=True)
class Target:
    """A cluster of ``nodes`` × ``per_node`` devices and what each device and link does; ``source`` says where
    every figure comes from."""

    name: str
    nodes: int
    per_node: int
    calibration: Calibration
    dense_tflops: float  # whole-model FLOP/s reached on the dense blocks (measured MFU × peak)
    hbm_gbps: float  # device memory bandwidth, for the optimiser
    source: str
    adam_bytes_per_param: float = 28.0  # fp32: read param, grad, m, v; write param, m, v


@dataclass(frozen=True)
class TargetModel:
    """What the step model needs of a model config (``from_config``) and its batch."""

    d_model: int
    d_ff: int
    d_expert: int
    num_experts: int
    top_k: int
    n_layers: int
    moe_layers: int
    vocab_size: int
    seq_len: int
    tokens_per_micro: int  # per device
    micro_batches: int
    dense_params: int
    expert_params: int  # all experts' parameters
    first_moe_layer: int = 0  # blocks below the first MoE layer (what ``affinity`` placement runs again)

    @staticmethod
    def from_config(cfg) -> "TargetModel":
        from locmoe.planning.memory_plan import layer_counts, parameter_count

        m, moe = cfg.model, cfg.moe
        dense_params = parameter_count(cfg, local_experts=0)  # every replicated tensor
        return TargetModel(
            m.d_model,
            m.d_ff,
            moe.d_expert,
            moe.num_experts,
            moe.router.top_k,
            m.n_layers,
            layer_counts(cfg)[1],
            m.vocab_size,
            cfg.data.seq_len,
            cfg.train.batch_size * cfg.data.seq_len,
            cfg.train.grad_accum,
            dense_params,
            parameter_count(cfg, local_experts=moe.num_experts) - dense_params,
            min(m.dense_layers, m.n_layers),  # the first MoE block sits right above the dense ones
        )


def step_time(model: TargetModel, stats: RoutingStats, dispatch: str, target: Target, placement: str = "drawn") -> dict:
    """Seconds of one optimiser step on ``target`` and its parts, for a router with ``stats`` and ``dispatch``
    ("hierarchical" or "flat") and the sequence ``placement`` (drawn, affinity, embedding)."""
    d, s, T, A = model.d_model, model.seq_len, model.tokens_per_micro, model.micro_batches
    L, M = model.n_layers, model.moe_layers
    attention, ffn, router = 8 * d * d + 4 * s * d, 6 * d * model.d_ff, 2 * d * model.num_experts
    per_token = L * attention + (L - M) * ffn + M * router + 2 * d * model.vocab_size
    dense = 3 * A * T * per_token / (target.dense_tflops * 1e12)
    prefix = {
        "drawn": 0,
        "embedding": router,
        "affinity": model.first_moe_layer * (attention + ffn) + attention + router,
    }
    place = A * T * prefix[placement] / (target.dense_tflops * 1e12)
    moe_model = MoEModel(d, model.d_expert, model.num_experts, model.top_k, M, s, T)
    layer = layer_times(moe_model, System("run", stats, dispatch), target.calibration, target.nodes, target.per_node)
    experts = 3 * A * M * layer["expert"]
    all_to_all = 2 * A * M * layer["all_to_all"]
    P = target.nodes * target.per_node
    replicas = max(P // model.num_experts, 1)  # ranks that hold the same expert
    grads = _ring_all_reduce(4 * model.dense_params, P, target) + _ring_all_reduce(
        4 * model.expert_params / model.num_experts * max(model.num_experts // P, 1), replicas, target
    )
    local_params = model.dense_params + model.expert_params * replicas / P
    adam = target.adam_bytes_per_param * local_params / (target.hbm_gbps * 1e9)
    parts = {
        "dense": dense,
        "placement": place,
        "experts": experts,
        "all_to_all": all_to_all,
        "grad_reduce": grads,
        "optimizer": adam,
    }
    return {**{f"{k}_ms": v * 1e3 for k, v in parts.items()}, "step_ms": sum(parts.values()) * 1e3}


def _ring_all_reduce(nbytes: float, ranks: int, target: Target) -> float:
    """A ring all-reduce of ``nbytes`` over ``ranks`` devices (node-major): the NIC's rate once it spans nodes."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    _, nvlink = target.calibration.alpha_beta()
    rate = target.calibration.nic_gbps * 1e9 if ranks > target.per_node else nvlink
    return 2 * (ranks - 1) / ranks * nbytes / rate


def with_topology(target: Target, nodes: int, per_node: int) -> Target:
    """The same devices and links in another shape."""
    return dataclasses.replace(
        target, nodes=nodes, per_node=per_node, name=f"{target.name.split(' ')[0]} {nodes}x{per_node}"
    )


# The two target clusters of the locality issue. Figures and their sources:
# - H100 SXM: NVLink all-to-all curve measured on 2xH200 (same NVLink 4; cluster_sim.Calibration), grouped-GEMM
#   rate 52.7 % of the measured 800 TFLOP/s dense GEMM (docs/benchmarks.md, experts alone, balanced), dense model
#   rate 41.1 % MFU of 989 TFLOP/s (our dense twin, train_throughput.py), HBM3 3.35 TB/s (NVIDIA's data sheet),
#   one 400 Gb/s NIC per GPU (stated; 2 us per remote peer).
# - Ascend 910B: 313 TFLOP/s fp16 peak (Huawei's figure), dense model rate taken at the same 41 % MFU and
#   experts at the same 52.7 % of peak as on H100 (not measured here: no Ascend device), HCCS 56 GB/s per link,
#   7 links to the other 7 NPUs of a node (Huawei's figures) as the intra-node all-to-all rate, 200 Gb/s RoCE
#   per NPU (stated), HBM2e 1.6 TB/s.
H100_2X8 = Target(
    "H100 2x8",
    2,
    8,
    Calibration(grouped_tflops=0.527 * 800, nic_gbps=50.0),
    dense_tflops=0.411 * 989,
    hbm_gbps=3350.0,
    source="NVLink curve measured on 2xH200; GEMM rates measured on H100 (800 TFLOP/s dense, experts 52.7 %); "
    "model 41.1 % MFU measured; NIC 400 Gb/s per GPU, HBM 3.35 TB/s stated",
)
ASCEND_910B_2X8 = Target(
    "910B 2x8",
    2,
    8,
    Calibration(
        dense_tflops=313.0,
        grouped_tflops=0.527 * 313,
        a2a_sizes_mb=(1.0, 16.0, 128.0),
        a2a_gbps=(28.0 * 392 / 446, 223.0 * 392 / 446, 392.0),  # the NVLink curve's shape, HCCS 7 x 56 GB/s
        nic_gbps=25.0,
        source="Ascend 910B: stated (313 TFLOP/s fp16, HCCS 7 x 56 GB/s, RoCE 200 Gb/s per NPU)",
    ),
    dense_tflops=0.411 * 313,
    hbm_gbps=1600.0,
    source="Huawei's figures (313 TFLOP/s fp16, HCCS 56 GB/s x 7 links, HBM 1.6 TB/s), RoCE 200 Gb/s per NPU "
    "stated; efficiencies assumed equal to the measured H100 ones",
)
TARGETS = {"h100": H100_2X8, "910b": ASCEND_910B_2X8}
