"""What the PanGu-Sigma-style model is, independent of the framework: which blocks are MoE, and every
parameter's name and global shape. The names are the contract between the backends, the checkpoints and
the router export; a checkpoint holds exactly these tensors (experts consolidated over all ranks).

    embed.weight                         [V, d]
    layers.{i}.attn_norm.weight          [d]
    layers.{i}.attn.wqkv.weight          [3d, d]      (q, k, v stacked; y = x W^T)
    layers.{i}.attn.wo.weight            [d, d]
    layers.{i}.ffn_norm.weight           [d]
    dense block i:
    layers.{i}.ffn.w1.weight             [d_ff, d]    (SwiGLU: w2(silu(w1 x) * w3 x))
    layers.{i}.ffn.w3.weight             [d_ff, d]
    layers.{i}.ffn.w2.weight             [d, d_ff]
    MoE block i:
    layers.{i}.moe.router.gate_weight    [d, E]       (learned gate only; GrAP and hash have none)
    layers.{i}.moe.router.angle_ema      [E]          (float64 state of the capacity bound)
    layers.{i}.moe.router.gate_bias      [E]          (learned gate bias eps, router.gate_bias only; init 0)
    layers.{i}.moe.router.selection_bias [E]          (loss-free balancing state, router.bias_update_rate > 0)
    layers.{i}.moe.router.hash_table     [V]          (hash router only)
    layers.{i}.moe.experts.w1            [E, d, f]    (y = x w1, as grouped GEMMs take it)
    layers.{i}.moe.experts.w3            [E, d, f]    (SwiGLU only)
    layers.{i}.moe.experts.w2            [E, f, d]
    norm.weight                          [d]
    lm_head.weight                       [V, d]       (absent with tie_embeddings)
"""

from __future__ import annotations

import zlib

import numpy as np

from locmoe.config.schema import JobConfig, ModelConfig


def moe_layer_indices(m: ModelConfig) -> list[int]:
    """Blocks above the dense ones, every moe_every-th of them."""
    return [i for i in range(m.dense_layers, m.n_layers) if (i - m.dense_layers) % m.moe_every == 0]


def parameter_shapes(cfg: JobConfig) -> dict[str, tuple]:
    """Every tensor of a consolidated checkpoint, by name (see the module docstring)."""
    m, moe = cfg.model, cfg.moe
    d, V, E, f = m.d_model, m.vocab_size, moe.num_experts, moe.d_expert
    shapes: dict[str, tuple] = {"embed.weight": (V, d)}
    moe_layers = set(moe_layer_indices(m))
    for i in range(m.n_layers):
        p = f"layers.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (d,),
                p + "attn.wqkv.weight": (3 * d, d),
                p + "attn.wo.weight": (d, d),
                p + "ffn_norm.weight": (d,),
            }
        )
        if i not in moe_layers:
            shapes.update(
                {p + "ffn.w1.weight": (m.d_ff, d), p + "ffn.w3.weight": (m.d_ff, d), p + "ffn.w2.weight": (d, m.d_ff)}
            )
            continue
        r = p + "moe.router."
        if moe.router.gate == "dense" and moe.router.kind != "hash":
            shapes[r + "gate_weight"] = (d, E)
        shapes[r + "angle_ema"] = (E,)
        if moe.router.gate_bias and moe.router.kind != "hash":
            shapes[r + "gate_bias"] = (E,)
        if moe.router.bias_update_rate > 0:
            shapes[r + "selection_bias"] = (E,)
        if moe.router.kind == "hash":
            shapes[r + "hash_table"] = (V,)
        shapes.update({p + "moe.experts.w1": (E, d, f), p + "moe.experts.w2": (E, f, d)})
        if moe.activation == "swiglu":
            shapes[p + "moe.experts.w3"] = (E, d, f)
    shapes["norm.weight"] = (d,)
    if not m.tie_embeddings:
        shapes["lm_head.weight"] = (V, d)
    return shapes


def is_expert_param(name: str) -> bool:
    """Expert weights are sharded over the EP group; everything else is replicated."""
    return ".moe.experts." in name


def init_rule(name: str, cfg: ModelConfig) -> tuple[str, float]:
    """How a parameter starts: ("ones", 0), ("zeros", 0), ("normal", std) or ("state", 0) for router state
    buffers the router initialises itself.

    Output projections (attn.wo, ffn.w2, experts.w2) shrink with depth, GPT-2 style, so that the residual
    stream's variance stays bounded as blocks are added.
    """
    if name.endswith("norm.weight"):
        return "ones", 0.0
    if name.endswith(("angle_ema", "hash_table")):
        return "state", 0.0
    if name.endswith(("router.gate_bias", "router.selection_bias")):
        return "zeros", 0.0
    if name.endswith(("attn.wo.weight", "ffn.w2.weight", "experts.w2")):
        return "normal", cfg.init_std / (2 * cfg.n_layers) ** 0.5
    return "normal", cfg.init_std


def init_seed(name: str, seed: int) -> int:
    """A per-parameter seed: every rank and every layout draws the same global tensor for a name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def initial_value(name: str, cfg: JobConfig, seed: int) -> np.ndarray | None:
    """The global fp32 starting value of a parameter, or None for router state (the router sets it).

    Drawn with numpy from the parameter's own seed, so both backends start from the same weights for the same
    seed, whatever the rank count or construction order.
    """
    kind, std = init_rule(name, cfg.model)
    shape = parameter_shapes(cfg)[name]
    if kind == "ones":
        return np.ones(shape, np.float32)
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "normal":
        return np.random.default_rng(init_seed(name, seed)).standard_normal(shape, np.float32) * std
    return None


def initial_state(cfg: JobConfig, seed: int, names, experts: list):
    """(name, this rank's starting array) for each of ``names`` that has one; experts sliced to ``experts``."""
    for name in names:
        full = initial_value(name, cfg, seed)
        if full is not None:
            yield name, (full[experts] if is_expert_param(name) else full)
