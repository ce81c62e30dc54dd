"""What one rank holds of a model's parameters: its layout (W ranks, expert-parallel groups of EP), the bytes of
its FSDP2 shards by ``parallel.shard`` mode, the unsharded copies FSDP gathers, and the compute-dtype copies of
the matmul weights that autocast and the grouped GEMM make (``rank_memory`` walks a step with them).

Dense tensors shard over all W ranks, the experts over the W / EP ranks holding them (``backends/torch/sharding.py``);
FSDP2 cuts dim 0 into ``ceil(rows / group)`` pieces, and each rank is planned at the largest piece.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from locmoe.config.errors import ConfigError
from locmoe.config.schema import SHARD_MODES, JobConfig
from locmoe.model_spec import is_expert_param, parameter_shapes
from locmoe.planning import saved_activations as sa

FP32 = 4
STATE_BUFFERS = ("angle_ema", "selection_bias", "hash_table")  # router state: buffers, not optimised


@dataclass(frozen=True)
class RankLayout:
    """W ranks, expert-parallel groups of EP ranks (E / EP experts each), G ranks per node."""

    world: int
    ep: int
    devices_per_node: int

    @property
    def expert_dp(self) -> int:
        """Ranks that hold the same experts (and average their gradients)."""
        return self.world // self.ep

    @property
    def ep_nodes(self) -> int:
        return max(1, self.ep // self.devices_per_node)

    @staticmethod
    def of(cfg: JobConfig, devices: int, devices_per_node: int = 8) -> "RankLayout":
        """The layout ``locmoe train`` would build on ``devices`` ranks, ``devices_per_node`` to a node."""
        G = min(devices_per_node, devices)
        ep = cfg.parallel.expert_parallel_size or devices
        E = cfg.moe.num_experts
        if devices % G:
            raise ConfigError("parallel.devices_per_node", f"{G} does not divide the {devices} devices")
        if devices % ep or E % ep:
            what = "parallel.expert_parallel_size" if cfg.parallel.expert_parallel_size else "0: all devices"
            raise ConfigError(
                "parallel.expert_parallel_size",
                f"the expert-parallel size {ep} ({what}) must divide both the {devices} devices and "
                f"moe.num_experts ({E}): set it to a common divisor, e.g. parallel.expert_parallel_size="
                f"{math.gcd(devices, E)}",
            )
        if ep % G and G % ep:
            raise ConfigError(
                "parallel.expert_parallel_size", f"{ep} must be a multiple or a divisor of the devices per node ({G})"
            )
        return RankLayout(devices, ep, G)


@dataclass(frozen=True)
class PartBytes:
    """One block's (or the root's) parameters on this rank, fp32 unless named otherwise."""

    at_rest: int = 0  # this rank's shards (whole tensors where nothing shards them)
    whole: int = 0  # the tensors as the forward uses them (this rank's experts, every dense tensor)
    gathered: int = 0  # the unsharded copies FSDP makes of the sharded tensors
    copies: int = 0  # compute-dtype copies of the dense matmul weights (autocast's, cached through the forward)
    expert_copies: int = 0  # the experts' stacked / cast weights for the grouped GEMM
    largest_grad: int = 0  # bytes of the largest weight gradient in the compute dtype (the backward's transient)

    def __add__(self, other: "PartBytes") -> "PartBytes":
        return PartBytes(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def effective_shard(shard: str, layout: RankLayout) -> str:
    """One rank has nothing to shard (``backends.torch.sharding.sharded``)."""
    if shard not in SHARD_MODES:
        raise ConfigError("parallel.shard", f"{shard!r} is not one of {', '.join(SHARD_MODES)}")
    return shard if layout.world > 1 else "none"


def part_bytes(cfg: JobConfig, layout: RankLayout, shard: str, ex: sa.Execution) -> dict[str, PartBytes]:
    """{"dense", "moe", "root"}: one dense block's, one MoE block's and the root's parameters on this rank.

    The shapes of a two-block model (block 0 dense, block 1 MoE) stand for every block of their kind."""
    E, El = cfg.moe.num_experts, cfg.moe.num_experts // layout.ep
    sharded = shard != "none"
    dense_group = layout.world if sharded else 1
    expert_group = layout.expert_dp if sharded else 1
    tail = 1 + 1 / El if layout.ep == 1 and _drops(cfg) else 1.0  # the all-zero group of the dropped copies
    c = ex.compute_bytes
    two = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layers=2, dense_layers=1, moe_every=1))
    out = {"dense": PartBytes(), "moe": PartBytes(), "root": PartBytes()}
    for name, shape in parameter_shapes(two).items():
        if name.endswith(STATE_BUFFERS):
            continue
        key = "dense" if name.startswith("layers.0.") else "moe" if name.startswith("layers.1.") else "root"
        expert = is_expert_param(name)
        rows = shape[0] * El // E if expert else shape[0]
        row = _product(shape[1:])
        group = expert_group if expert else dense_group
        whole = rows * row * FP32
        copy = _copy_bytes(cfg, name, rows * row, c, tail) if expert else _dense_copy(cfg, name, shape, c)
        grad = copy if expert else (c * rows * row if len(shape) == 2 else 0)
        out[key] += PartBytes(
            at_rest=-(-rows // group) * row * FP32,
            whole=whole,
            gathered=whole if group > 1 else 0,
            copies=0 if expert else copy,
            expert_copies=copy if expert else 0,
        )
        if grad > out[key].largest_grad:
            out[key] = dataclasses.replace(out[key], largest_grad=int(grad))
    return out


def _drops(cfg: JobConfig) -> bool:
    return cfg.moe.router.kind != "expert_choice" and cfg.moe.capacity.mode != "dropless"


def _copy_bytes(cfg: JobConfig, name: str, elements: int, c: int, tail: float) -> int:
    """An expert weight's copy for the grouped GEMM: w1 and w3 are stacked (a new tensor in any dtype); w2 is
    cast (a copy under autocast) and, on one rank, given the dropped copies' all-zero group."""
    if cfg.moe.dispatch_shape == "static" and c == FP32:
        return 0  # cast in place of nothing: the fixed-shape bmm reads the fp32 weights
    stacked = name.endswith(("experts.w1", "experts.w3")) and cfg.moe.activation == "swiglu"
    if stacked or c < FP32 or tail > 1:
        return int(c * elements * tail)
    return 0


def _dense_copy(cfg: JobConfig, name: str, shape: tuple, c: int) -> int:
    """Under autocast, the bf16 copy of a matmul weight (the embedding's when the LM head is tied to it)."""
    if c == FP32 or len(shape) != 2:
        return 0
    if name == "embed.weight" and not cfg.model.tie_embeddings:
        return 0  # looked up in fp32; the untied lm_head.weight is the one cast
    return c * _product(shape)


def expert_whole(cfg: JobConfig, layout: RankLayout) -> int:
    m, moe = cfg.model, cfg.moe
    mats = 3 if moe.activation == "swiglu" else 2
    return FP32 * (moe.num_experts // layout.ep) * mats * m.d_model * moe.d_expert


def scaled(p: PartBytes, n: int) -> PartBytes:
    return PartBytes(p.at_rest * n, p.whole * n, p.gathered * n, p.copies * n, p.expert_copies * n, p.largest_grad)


def _product(shape) -> int:
    size = 1
    for n in shape:
        size *= int(n)
    return size
