"""Our tensors (``locmoe.model_spec`` names) as Qwen2-MoE's and back, in numpy: transposes, a per-head row
permutation and zeros, so the way back returns the same bytes.

Rotary: ours rotates the interleaved feature pairs (2i, 2i+1) of each head, transformers' ``rotate_half``
the pairs (i, i + hd/2) with the same angle. Reordering every head's q and k rows as (0, 2, 4, ..., 1, 3,
5, ...) turns one into the other; q and k get the same order, so every attention score (a dot product
over a head's features) is unchanged, and v, o_proj and everything else keep their order.

Router: Qwen2-MoE's logits are ``x @ W.T``. Ours are ``(x @ G) / temperature`` with G the learned gate
[d, E] or GrAP's fixed matrix (column e is E/d on feature group e): ``W = (G / temperature).T``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from locmoe.config.schema import JobConfig
from locmoe.export.hf_config import SHARED_EXPERT_SIZE, HFFormatError
from locmoe.model_spec import moe_layer_indices

F32 = np.float32


def rotary_half_order(n_heads: int, head_dim: int) -> np.ndarray:
    """[d] row order of q (and k) for ``rotate_half``: per head, the even features then the odd ones."""
    head = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    return (np.arange(n_heads)[:, None] * head_dim + head[None, :]).reshape(-1)


def grap_matrix(d_model: int, num_experts: int) -> np.ndarray:
    """[d, E] the fixed gate whose product is GrAP's group means (the matrix ``routing_ops`` uses on CUDA)."""
    group = np.arange(d_model) // (d_model // num_experts)
    return (group[:, None] == np.arange(num_experts)[None, :]).astype(F32) * F32(num_experts / d_model)


def router_weight(cfg: JobConfig, gate_weight: np.ndarray | None) -> np.ndarray:
    """[E, d] Qwen2-MoE router weight of one MoE block (``gate_weight`` None for GrAP)."""
    r = cfg.moe.router
    G = grap_matrix(cfg.model.d_model, cfg.moe.num_experts) if r.gate == "grap" else gate_weight
    assert G is not None, "a learned gate exports its gate_weight"
    return np.ascontiguousarray((G / F32(r.temperature)).T.astype(F32))


def to_hf(cfg: JobConfig, w: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of the Qwen2-MoE checkpoint (per-expert names, as the Hub's checkpoints have them)."""
    m, E = cfg.model, cfg.moe.num_experts
    d, order = m.d_model, rotary_half_order(m.n_heads, m.d_model // m.n_heads)
    out = {"model.embed_tokens.weight": w["embed.weight"], "model.norm.weight": w["norm.weight"]}
    if not m.tie_embeddings:
        out["lm_head.weight"] = w["lm_head.weight"]
    sparse = set(moe_layer_indices(cfg.model))
    for i in range(m.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        wq, wk, wv = np.split(w[p + "attn.wqkv.weight"], 3)
        out.update(
            {
                q + "input_layernorm.weight": w[p + "attn_norm.weight"],
                q + "post_attention_layernorm.weight": w[p + "ffn_norm.weight"],
                q + "self_attn.q_proj.weight": wq[order],
                q + "self_attn.k_proj.weight": wk[order],
                q + "self_attn.v_proj.weight": wv,
                q + "self_attn.o_proj.weight": w[p + "attn.wo.weight"],
            }
        )
        for name in ("q", "k", "v"):
            out[q + f"self_attn.{name}_proj.bias"] = np.zeros(d, F32)
        if i not in sparse:
            out.update(
                {
                    q + "mlp.gate_proj.weight": w[p + "ffn.w1.weight"],
                    q + "mlp.up_proj.weight": w[p + "ffn.w3.weight"],
                    q + "mlp.down_proj.weight": w[p + "ffn.w2.weight"],
                }
            )
            continue
        out[q + "mlp.gate.weight"] = router_weight(cfg, w.get(p + "moe.router.gate_weight"))
        w1, w3, w2 = (w[p + f"moe.experts.{n}"] for n in ("w1", "w3", "w2"))
        for e in range(E):
            x = q + f"mlp.experts.{e}."
            out.update(
                {x + "gate_proj.weight": w1[e].T, x + "up_proj.weight": w3[e].T, x + "down_proj.weight": w2[e].T}
            )
        s = q + "mlp.shared_expert."
        out.update(
            {
                s + "gate_proj.weight": np.zeros((SHARED_EXPERT_SIZE, d), F32),
                s + "up_proj.weight": np.zeros((SHARED_EXPERT_SIZE, d), F32),
                s + "down_proj.weight": np.zeros((d, SHARED_EXPERT_SIZE), F32),
                q + "mlp.shared_expert_gate.weight": np.zeros((1, d), F32),
            }
        )
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


class _Reader:
    """Takes tensors out of an HF checkpoint by name, checking shapes; ``left`` is what nobody took."""

    def __init__(self, tensors: Mapping[str, np.ndarray], where: str):
        self.tensors, self.where, self.left = tensors, where, set(tensors)

    def take(self, name: str, shape: tuple) -> np.ndarray:
        if name not in self.tensors:
            raise HFFormatError(f"{self.where}: tensor {name!r} is missing")
        a = self.tensors[name]
        if tuple(a.shape) != tuple(shape):
            raise HFFormatError(
                f"{self.where}: tensor {name!r} has shape {list(a.shape)}, the config needs {list(shape)}"
            )
        self.left.discard(name)
        return a

    def zero(self, name: str, shape: tuple, why: str) -> None:
        if np.any(self.take(name, shape)):
            raise HFFormatError(f"{self.where}: {name} is not zero; {why}")


def from_hf(cfg: JobConfig, hf: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Our fp32 weights (no router state) from a Qwen2-MoE checkpoint: per-expert or fused expert tensors
    (what transformers 5's ``save_pretrained`` may write); biases and the shared expert must be zero."""
    m, moe = cfg.model, cfg.moe
    d, E, f, V = m.d_model, moe.num_experts, moe.d_expert, m.vocab_size
    inverse = np.argsort(rotary_half_order(m.n_heads, d // m.n_heads))
    r = _Reader(hf, where)
    out = {
        "embed.weight": r.take("model.embed_tokens.weight", (V, d)),
        "norm.weight": r.take("model.norm.weight", (d,)),
    }
    if not m.tie_embeddings:
        out["lm_head.weight"] = r.take("lm_head.weight", (V, d))
    sparse = set(moe_layer_indices(cfg.model))
    for i in range(m.n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        qkv = [r.take(q + f"self_attn.{n}_proj.weight", (d, d)) for n in ("q", "k", "v")]
        out[p + "attn.wqkv.weight"] = np.concatenate([qkv[0][inverse], qkv[1][inverse], qkv[2]])
        for n in ("q", "k", "v"):
            if q + f"self_attn.{n}_proj.bias" in hf:
                r.zero(q + f"self_attn.{n}_proj.bias", (d,), "LocMoE's attention has no biases")
        out.update(
            {
                p + "attn.wo.weight": r.take(q + "self_attn.o_proj.weight", (d, d)),
                p + "attn_norm.weight": r.take(q + "input_layernorm.weight", (d,)),
                p + "ffn_norm.weight": r.take(q + "post_attention_layernorm.weight", (d,)),
            }
        )
        if i not in sparse:
            out.update(
                {
                    p + "ffn.w1.weight": r.take(q + "mlp.gate_proj.weight", (m.d_ff, d)),
                    p + "ffn.w3.weight": r.take(q + "mlp.up_proj.weight", (m.d_ff, d)),
                    p + "ffn.w2.weight": r.take(q + "mlp.down_proj.weight", (d, m.d_ff)),
                }
            )
            continue
        out[p + "moe.router.gate_weight"] = r.take(q + "mlp.gate.weight", (E, d)).T
        w1, w3, w2 = _experts(r, q, E, d, f)
        out.update({p + "moe.experts.w1": w1, p + "moe.experts.w3": w3, p + "moe.experts.w2": w2})
        _shared_expert_is_zero(r, q, d)
    if r.left:
        raise HFFormatError(f"{where}: tensors LocMoE's model has no place for: {sorted(r.left)[:5]}")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _experts(r: _Reader, q: str, E: int, d: int, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w1, w3, w2) as ours [E, d, f], [E, d, f], [E, f, d]."""
    fused = q + "mlp.experts.gate_up_proj"
    if fused in r.tensors:
        gate_up = r.take(fused, (E, 2 * f, d))  # [E, 2f, d]: gate rows, then up rows
        down = r.take(q + "mlp.experts.down_proj", (E, d, f))
        return gate_up[:, :f].transpose(0, 2, 1), gate_up[:, f:].transpose(0, 2, 1), down.transpose(0, 2, 1)
    x = [q + f"mlp.experts.{e}." for e in range(E)]
    w1 = np.stack([r.take(n + "gate_proj.weight", (f, d)).T for n in x])
    w3 = np.stack([r.take(n + "up_proj.weight", (f, d)).T for n in x])
    w2 = np.stack([r.take(n + "down_proj.weight", (d, f)).T for n in x])
    return w1, w3, w2


def _shared_expert_is_zero(r: _Reader, q: str, d: int) -> None:
    """The shared expert adds sigmoid(g x) * down(silu(gate x) * up x); LocMoE has none, so it must be 0
    for every x: a zero down, gate or up projection (or a zero-width expert)."""
    s = q + "mlp.shared_expert."
    names = [s + "gate_proj.weight", s + "up_proj.weight", s + "down_proj.weight"]
    if not all(n in r.tensors for n in names):
        raise HFFormatError(f"{r.where}: the shared expert of {q[:-1]} is incomplete (needs {names})")
    width = r.tensors[names[0]].shape[0]
    parts = [r.take(names[0], (width, d)), r.take(names[1], (width, d)), r.take(names[2], (d, width))]
    r.take(q + "mlp.shared_expert_gate.weight", (1, d))
    if width and all(np.any(a) for a in parts):
        raise HFFormatError(
            f"{r.where}: the shared expert of {q[:-1]} is not zero; LocMoE's MoE blocks have no shared expert"
        )
