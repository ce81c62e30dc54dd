"""Our model as transformers' Qwen2-MoE (``Qwen2MoeForCausalLM``, ``model_type: qwen2_moe``): the config
mapping both ways and what cannot be represented. Framework-free (plain dicts).

Why Qwen2-MoE (docs/inference.md has the comparison): it is the architecture transformers ships (and vLLM
and SGLang load) that computes ours exactly — pre-RMSNorm blocks, full multi-head attention with default
rotary, SwiGLU dense blocks wherever ``mlp_only_layers`` says, softmax top-k routers over a plain linear
gate with renormalisation as a switch (``norm_topk_prob``), SwiGLU experts, tied embeddings. What it adds
is made to contribute exactly zero: q/k/v biases are zero, and the shared expert every sparse block has is
one hidden unit wide with all-zero weights (its output is 0 and its sigmoid gate multiplies that 0).
Qwen3-MoE normalises q and k per head (not exact); Mixtral has no dense blocks; Ernie 4.5 MoE always
renormalises (top-1 gives 1, not p) and places MoE blocks only at ``(i + 1) % interval == 0``.
"""

from __future__ import annotations

from locmoe.config.schema import JobConfig
from locmoe.errors import LocMoEError
from locmoe.model_spec import moe_layer_indices

ARCHITECTURE = "Qwen2MoeForCausalLM"
MODEL_TYPE = "qwen2_moe"
SHARED_EXPERT_SIZE = 1  # the shared expert's hidden size: one unit, all-zero weights


# router options Qwen2-MoE's router (softmax over x @ W.T, top-k) cannot express: (field, its plain value, why)
ROUTER_OPTIONS = (
    ("gate_activation", "none", "Qwen2-MoE's router feeds the plain linear scores to its softmax"),
    ("gate_bias", False, "Qwen2-MoE's router has no bias"),
    ("scoring", "softmax", "Qwen2-MoE's router scores experts with a softmax"),
    (
        "bias_update_rate",
        0.0,
        "the loss-free balancing bias changes which experts are chosen, and Qwen2-MoE's router has no selection bias",
    ),
)


class HFFormatError(LocMoEError):
    """A model that Qwen2-MoE cannot represent, or a Hugging Face directory we cannot read."""


def check_exportable(cfg: JobConfig) -> None:
    """Raise an :class:`HFFormatError` naming every config field Qwen2-MoE cannot represent."""
    r, moe = cfg.moe.router, cfg.moe
    problems = []
    if r.kind == "hash":
        problems.append(
            "moe.router.kind = 'hash': the hash router picks experts by token id, which no "
            "transformers MoE block can express"
        )
    if r.kind == "expert_choice":
        problems.append(
            "moe.router.kind = 'expert_choice': experts pick tokens across the batch; transformers' "
            "MoE blocks route each token on its own (token choice)"
        )
    if moe.domains.num_domains > 1:
        problems.append(
            f"moe.domains.num_domains = {moe.domains.num_domains}: Random Routed Experts restrict a "
            "token to its domain's experts by a tag transformers' models have no input for"
        )
    for field, plain, why in ROUTER_OPTIONS:
        value = getattr(r, field, plain)
        if value != plain:
            problems.append(f"moe.router.{field} = {value!r}: {why}")
    if moe.activation != "swiglu":
        problems.append(
            f"moe.activation = {moe.activation!r}: Qwen2-MoE's experts are SwiGLU (gated); a plain "
            "GeLU expert has no equivalent"
        )
    if not moe_layer_indices(cfg.model):
        problems.append("model.dense_layers: every block is dense, there is no MoE layer to export")
    if problems:
        raise HFFormatError("cannot export to transformers' Qwen2-MoE: " + "; ".join(problems))


def hf_config(cfg: JobConfig, eos_token_id: int | None = None) -> dict:
    """``config.json`` of the export (fp32 weights)."""
    m, moe = cfg.model, cfg.moe
    k = moe.router.top_k
    assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    sparse = set(moe_layer_indices(cfg.model))
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.d_ff,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_heads,
        "head_dim": m.d_model // m.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "initializer_range": m.init_std,
        "tie_word_embeddings": m.tie_embeddings,
        "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": m.n_layers,
        "attention_dropout": 0.0,
        "qkv_bias": True,
        "use_cache": True,
        "num_experts": moe.num_experts,
        "num_experts_per_tok": k,
        "moe_intermediate_size": moe.d_expert,
        # our combine weights: renormalised over the k choices when k > 1, the raw probability when k = 1
        "norm_topk_prob": k > 1,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [i for i in range(m.n_layers) if i not in sparse],
        "shared_expert_intermediate_size": SHARED_EXPERT_SIZE,
        "router_aux_loss_coef": moe.router.aux_loss_coef,
        "output_router_logits": False,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def model_fields_from_hf(hf: dict, where: str) -> tuple[dict, dict]:
    """(``model`` section, ``moe`` section) of our config for a Qwen2-MoE ``config.json``; an
    :class:`HFFormatError` naming the field for anything ours cannot compute."""

    def need(key):
        if key not in hf:
            raise HFFormatError(f"{where}: {key!r} is missing")
        return hf[key]

    if hf.get("model_type") != MODEL_TYPE:
        raise HFFormatError(
            f"{where}: model_type {hf.get('model_type')!r}; `locmoe convert --from hf` reads "
            f"{MODEL_TYPE!r} (what `locmoe export --format hf` writes)"
        )
    d, heads, n = need("hidden_size"), need("num_attention_heads"), need("num_hidden_layers")
    rope, scaling = hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    checks = [
        ("num_key_value_heads", hf.get("num_key_value_heads", heads), heads, "grouped-query attention"),
        ("head_dim", hf.get("head_dim") or d // heads, d // heads, "a head size other than hidden/heads"),
        ("hidden_act", hf.get("hidden_act", "silu"), "silu", "another activation"),
        ("use_sliding_window", bool(hf.get("use_sliding_window", False)), False, "sliding-window attention"),
        ("rope_parameters.rope_type", rope_type, "default", "scaled rotary"),
        ("decoder_sparse_step", hf.get("decoder_sparse_step", 1), 1, "MoE blocks by sparse step"),
    ]
    for key, got, want, what in checks:
        if got != want:
            raise HFFormatError(f"{where}: {key} = {got!r}; LocMoE's model has no {what} (needs {want!r})")
    k, E = need("num_experts_per_tok"), need("num_experts")
    if bool(hf.get("norm_topk_prob", False)) != (k > 1):
        raise HFFormatError(
            f"{where}: norm_topk_prob = {hf.get('norm_topk_prob')!r} with {k} experts per token; "
            "LocMoE renormalises the top-k weights exactly when k > 1"
        )
    sparse = [i for i in range(n) if i not in set(hf.get("mlp_only_layers") or [])]
    dense_layers, every = _block_pattern(sparse, n, where)
    model = {
        "vocab_size": need("vocab_size"),
        "d_model": d,
        "n_layers": n,
        "n_heads": heads,
        "d_ff": need("intermediate_size"),
        "max_seq_len": need("max_position_embeddings"),
        "dense_layers": dense_layers,
        "moe_every": every,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "init_std": float(hf.get("initializer_range", 0.02)),
    }
    moe = {
        "num_experts": E,
        "d_expert": need("moe_intermediate_size"),
        "router": {"kind": "gshard" if k > 1 else "switch", "gate": "dense", "top_k": k},
        "capacity": {"mode": "dropless"},
    }
    return model, moe


def _block_pattern(sparse: list[int], n: int, where: str) -> tuple[int, int]:
    """(dense_layers, moe_every) whose MoE blocks are exactly ``sparse``."""
    if not sparse:
        raise HFFormatError(f"{where}: mlp_only_layers lists every block; there is no MoE block")
    first = sparse[0]
    every = sparse[1] - first if len(sparse) > 1 else max(n - first, 1)
    if list(range(first, n, every)) != sparse:
        raise HFFormatError(
            f"{where}: MoE blocks {sparse} (the blocks not in mlp_only_layers) are not 'dense "
            "blocks at the bottom, then every k-th block', which is what LocMoE's model places"
        )
    return first, every
