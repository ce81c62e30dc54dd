"""How many bytes one training process needs, from the config alone: parameters, gradients, AdamW moments,
activations and the batch. ``locmoe train`` calls :func:`check_fits` before it builds anything, so a model or
batch that cannot exist is one line naming the fields that drive it, not an allocator's traceback.

The estimate is a lower bound (float32 weights and optimizer states, the activations a backward pass must keep
at the least, in the compute dtype): a config it refuses cannot run; one it accepts may still be too large for
the device by the frameworks' own overheads. Python integers throughout, so sizes of 10^12 and beyond do not overflow.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from locmoe.config.errors import ConfigError
from locmoe.config.schema import JobConfig
from locmoe.model_spec import is_expert_param, parameter_shapes

FLOAT = 4  # bytes of a float32 value
INDEX = 8  # bytes of an int64 token id
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, one float32 each per parameter

# The size fields the estimate grows with: the candidates named as what drives a refusal.
SIZE_FIELDS = (
    "model.vocab_size",
    "model.d_model",
    "model.n_layers",
    "model.d_ff",
    "model.max_seq_len",
    "moe.num_experts",
    "moe.d_expert",
    "data.seq_len",
    "train.batch_size",
)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one process holds at the peak of a training step, by what holds them."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    batch: int

    @property
    def total(self) -> int:
        """The peak: the weights, and the larger of what the forward pass keeps for the backward pass and what
        the update holds (gradients are made as activations are freed; AdamW's moments appear at the first
        update), so that the total stays a lower bound from the first step on."""
        return self.parameters + max(self.activations + self.batch, self.gradients + self.optimizer)

    def parts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def layer_counts(cfg: JobConfig) -> tuple[int, int]:
    """(dense blocks, MoE blocks), counted without listing them (``model.n_layers`` may be 2**63 - 1)."""
    m = cfg.model
    above = max(m.n_layers - m.dense_layers, 0)
    n_moe = -(-above // m.moe_every)  # every moe_every-th block above the dense ones, the first included
    return m.n_layers - n_moe, n_moe


def parameter_count(cfg: JobConfig, local_experts: int) -> int:
    """Parameters one process holds: every replicated tensor, and ``local_experts`` of each expert tensor.

    The shapes of a two-block model (block 0 dense, block 1 MoE) give one block of each kind; the real count
    multiplies them, so that no loop runs over the layers."""
    E = cfg.moe.num_experts
    two = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layers=2, dense_layers=1, moe_every=1))
    per = {"layers.0.": 0, "layers.1.": 0, "": 0}
    for name, shape in parameter_shapes(two).items():
        size = _product(shape)
        size = size * local_experts // E if is_expert_param(name) else size
        per[next(p for p in per if name.startswith(p))] += size
    n_dense, n_moe = layer_counts(cfg)
    return per[""] + n_dense * per["layers.0."] + n_moe * per["layers.1."]


def activation_count(cfg: JobConfig, sequences: int) -> int:
    """Values a backward pass keeps for ``sequences`` sequences of ``data.seq_len`` tokens (a lower bound).

    Per token and block: the residual, the norms, q/k/v and the attention output (8 d; no attention matrix:
    fused attention kernels do not keep one); a dense block's SwiGLU (4 d_ff), an MoE block's k copies
    through the dispatch (2 d) and an expert's SwiGLU (4 f). Then the float32 logits (V). With activation
    checkpointing only each block's input is kept, plus one block's worth."""
    m, moe = cfg.model, cfg.moe
    d = m.d_model
    k = moe.router.top_k or 1
    dense_block = 8 * d + 4 * m.d_ff
    moe_block = 8 * d + k * (2 * d + 4 * moe.d_expert)
    n_dense, n_moe = layer_counts(cfg)
    if cfg.train.activation_checkpointing:
        per_token = m.n_layers * d + max(dense_block if n_dense else 0, moe_block if n_moe else 0)
    else:
        per_token = n_dense * dense_block + n_moe * moe_block
    return sequences * cfg.data.seq_len * (per_token + m.vocab_size)


def rotary_count(cfg: JobConfig) -> int:
    """The cos and sin tables, [max_seq_len, head size] each."""
    return 2 * cfg.model.max_seq_len * (cfg.model.d_model // cfg.model.n_heads)


def plan_memory(cfg: JobConfig, ep_size: int = 1, emulated: bool = True) -> MemoryPlan:
    """The bytes of one process of a job whose expert-parallel group has ``ep_size`` ranks; ``emulated``: one
    process stands in for the whole group (it holds every expert and every rank's batch)."""
    E = cfg.moe.num_experts
    local_experts = E if emulated or ep_size <= 1 else max(1, E // ep_size)
    sequences = cfg.train.batch_size * (ep_size if emulated else 1)
    params = parameter_count(cfg, local_experts) * FLOAT
    activation_bytes = 2 if cfg.train.dtype == "bfloat16" else FLOAT  # autocast keeps bfloat16 activations
    return MemoryPlan(
        parameters=params,
        gradients=params,
        optimizer=ADAMW_MOMENTS * params,
        activations=activation_count(cfg, sequences) * activation_bytes + rotary_count(cfg) * FLOAT,
        batch=2 * sequences * cfg.data.seq_len * INDEX + sequences * INDEX,  # inputs, targets, domains
    )


def drivers(cfg: JobConfig, ep_size: int = 1, emulated: bool = True) -> list[tuple[str, str]]:
    """(field, its value) of the size fields that make the plan large, largest effect first: each field is set
    back to its default in turn, and one that at least halves the total (and by at least the square root of the
    largest such factor) drives it, else the one that shrinks it most. An emulated group counts as
    ``parallel.nodes`` (one process holds every rank's batch)."""
    total = plan_memory(cfg, ep_size, emulated).total
    effect = {}
    for field in SIZE_FIELDS:
        smaller = plan_memory(_with_default(cfg, field), ep_size, emulated).total
        if smaller < total:
            effect[(field, str(_get(cfg, field)))] = total / max(smaller, 1)
    if emulated and ep_size > 1:
        emulating = (
            f"{cfg.parallel.nodes} (x parallel.devices_per_node = {cfg.parallel.devices_per_node} emulated ranks)"
        )
        effect[("parallel.nodes", emulating)] = total / max(plan_memory(cfg, 1, emulated).total, 1)
    ranked = sorted(effect, key=lambda field: effect[field], reverse=True)
    # NOTE: beside a field that alone makes it 10^9 times too large, one that doubles it is not worth naming
    strong = max(effect.values(), default=1) ** 0.5
    return [f for f in ranked if effect[f] >= max(2, strong)] or ranked[:1]


def check_fits(cfg: JobConfig, available: int, where: str, ep_size: int = 1, emulated: bool = True) -> MemoryPlan:
    """The plan, or a ConfigError when it needs more than ``available`` bytes of ``where`` (e.g. "host memory"):
    what it needs and of what, what is available, and which fields drive it with their values."""
    plan = plan_memory(cfg, ep_size, emulated)
    if plan.total <= available:
        return plan
    fields = drivers(cfg, ep_size, emulated)
    b = {name: format_bytes(n) for name, n in plan.parts().items()}
    parts = (
        f"parameters {b['parameters']}, then activations {b['activations']} and the batch {b['batch']}, "
        f"or gradients {b['gradients']} and AdamW's moments {b['optimizer']}"
    )
    named = ", ".join(f"{field} = {value}" for field, value in fields)
    raise ConfigError(
        fields[0][0] if fields else "",
        f"the job needs at least {format_bytes(plan.total)} ({plan.total} bytes: {parts}) per process, but "
        f"{where} has {format_bytes(available)} ({available} bytes) available; driven by {named}: lower "
        f"{'it' if len(fields) == 1 else 'them'}",
    )


def host_memory() -> tuple[int, str]:
    """(bytes available, where) of a run on the CPU: what its plan is checked against."""
    return available_host_bytes(), "host memory (MemAvailable)"


def available_host_bytes() -> int:
    """Memory the kernel can give this process now (MemAvailable, else free pages); a huge number if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def format_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``; up to EiB, beyond which the number of EiB grows."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"


def _product(shape: tuple) -> int:
    size = 1
    for n in shape:
        size *= int(n)
    return size


def _get(cfg: JobConfig, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def _with_default(cfg: JobConfig, dotted: str) -> JobConfig:
    section, name = dotted.split(".")
    part = getattr(cfg, section)
    default = type(part)()
    return dataclasses.replace(cfg, **{section: dataclasses.replace(part, **{name: getattr(default, name)})})
