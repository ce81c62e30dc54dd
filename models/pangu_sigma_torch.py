"""PanGu-Sigma-style decoder in PyTorch: dense blocks at the bottom, MoE blocks above (Random Routed Experts:
a sample's domain picks its expert group, the router picks inside it). Pre-norm (RMSNorm), rotary
attention, SwiGLU FFNs. Parameter names follow ``locmoe.model_spec`` (the checkpoint contract).
"""

from __future__ import annotations

from typing import Any, Generic, Optional, Sequence, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from locmoe.config.schema import JobConfig, ModelConfig
from locmoe.model_spec import initial_state, moe_layer_indices, parameter_shapes
from locmoe.moe.records import MoEMetrics
from locmoe.parallel.context import ExpertParallel


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32: bf16's 8-bit mantissa loses the mean square of large activations
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight).to(x.dtype)


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_len, head_dim/2]."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, hd]; rotate each (even, odd) feature pair by its position's angle."""
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = m.n_heads, m.d_model // m.n_heads
        self.wqkv = nn.Linear(m.d_model, 3 * m.d_model, bias=False)
        self.wo = nn.Linear(m.d_model, m.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S, d = x.shape
        q, k, v = self.wqkv(x).view(B, S, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, S, hd]
        q, k = apply_rotary(q, cos[:S], sin[:S]), apply_rotary(k, cos[:S], sin[:S])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, S, d))


class FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.w1 = nn.Linear(d, d_ff, bias=False)
        self.w3 = nn.Linear(d, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


_MoE = TypeVar("_MoE", bound=nn.Module)


class Block(nn.Module, Generic[_MoE]):
    moe: _MoE  # MoE blocks only (dense blocks have ``ffn``)

    def __init__(self, cfg: JobConfig, layer_id: int, ep: Optional[ExpertParallel], moe_cls: type[_MoE]):
        """``moe_cls``: the MoE layer of MoE blocks, given by the backend that builds the model (training's
        ``backends.torch.moe_layer.MoELayer``, serving's own; same constructor, same parameter names)."""
        super().__init__()
        m = cfg.model
        self.attn_norm, self.ffn_norm = RMSNorm(m.d_model, m.norm_eps), RMSNorm(m.d_model, m.norm_eps)
        self.attn = Attention(m)
        if ep is None:
            self.ffn = FeedForward(m.d_model, m.d_ff)
        else:
            self.moe = moe_cls(cfg.moe, m.d_model, m.vocab_size, ep, layer_id)
        self.recompute = False  # train.activation_checkpointing (see ``PanGuSigma.set_execution``)

    def mix(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention half: (residual stream after attention, its FFN-normed input)."""
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x, self.ffn_norm(x)

    def dense_ffn(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The FFN half of a dense block: the residual stream after it."""
        return x + self.ffn(h)

    def forward(self, x, cos, sin, token_ids, domain):
        with record_function("attention"):
            x, h = _maybe_recompute(self.mix, self.recompute, x, cos, sin)
        if hasattr(self, "ffn"):
            with record_function("dense_ffn"):
                return _maybe_recompute(self.dense_ffn, self.recompute, x, h), None, None
        y, aux, metrics = self.moe(h, token_ids=token_ids, domain=domain)  # dropped copies: y = 0 here
        return x + y, aux, metrics


def _maybe_recompute(fn, recompute: bool, *args):
    """``fn(*args)``, or with activation checkpointing: keep only the inputs, recompute in the backward."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class PanGuSigma(nn.Module):
    rope_cos: torch.Tensor  # buffers (``register_buffer``)
    rope_sin: torch.Tensor

    def __init__(self, cfg: JobConfig, ep: ExpertParallel, moe_cls: type[nn.Module]):
        """``ep``: what the MoE layers know of expert parallelism; ``moe_cls``: their class (see :class:`Block`)."""
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.moe_layers = moe_layer_indices(m)
        self.embed = nn.Embedding(m.vocab_size, m.d_model)
        self.layers = nn.ModuleList(
            Block(cfg, i, ep if i in self.moe_layers else None, moe_cls) for i in range(m.n_layers)
        )
        self.norm = RMSNorm(m.d_model, m.norm_eps)
        self.lm_head = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
        cos, sin = rotary_tables(m.d_model // m.n_heads, m.max_seq_len, m.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def blocks(self) -> Sequence[Block[Any]]:
        """``layers``, typed: its blocks."""
        # NOTE: Any, not the backend's MoELayer: a model imports no backend module (.importlinter), and the
        # layer class is the builder's choice (training's MoELayer, serving's InferenceMoE)
        return cast("Sequence[Block[Any]]", self.layers)

    def forward(
        self, tokens: torch.Tensor, domain: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[MoEMetrics]]:
        """tokens: [B, S], domain: [B] -> (logits [B, S, V], summed auxiliary objective, per-MoE-layer metrics)."""
        B, S = tokens.shape
        if S > self.rope_cos.shape[0]:
            raise ValueError(f"sequence length {S} exceeds model.max_seq_len ({self.rope_cos.shape[0]})")
        dom = None if domain is None else domain[:, None].expand(B, S)
        x = self.embed(tokens)
        aux, metrics = x.new_zeros((), dtype=torch.float32), []
        for block in self.layers:
            x, a, m = block(x, self.rope_cos, self.rope_sin, tokens, dom)
            if a is not None:
                aux, metrics = aux + a, metrics + [m]
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight if self.lm_head is None else self.lm_head.weight)
        return logits, aux, metrics

    @torch.no_grad()
    def node_preference(
        self, tokens: torch.Tensor, domain: Optional[torch.Tensor] = None, through_blocks: bool = True
    ) -> torch.Tensor:
        """tokens: [B, S] -> [B, N]: the first MoE layer's gate probability on each node, averaged over each
        sequence (``locmoe.data.placement``). ``through_blocks``: on that layer's real input (the blocks below it
        and its attention half run), else on the normed token embeddings (nothing runs but the gate)."""
        B, S = tokens.shape
        dom = None if domain is None else domain[:, None].expand(B, S)
        x = self.embed(tokens)
        for block in self.blocks:
            if hasattr(block, "moe"):
                h = block.mix(x, self.rope_cos, self.rope_sin)[1] if through_blocks else block.ffn_norm(x)
                return block.moe.node_preference(h, dom).float().mean(dim=1)
            if through_blocks:
                x, _, _ = block(x, self.rope_cos, self.rope_sin, tokens, dom)
        raise ValueError("node_preference: the model has no MoE layer")

    def set_execution(self, compile_blocks: bool = False, activation_checkpointing: bool = False) -> None:
        """How the blocks run; neither changes what they compute.

        ``compile_blocks``: the attention half of each block, and the FFN half of each dense block, become
        ``torch.compile``d graphs (norms, rotary, attention, SwiGLU fused; no graph breaks). The MoE layer stays
        eager around its own fused kernels: its routing has no fixed shapes with expert parallelism.
        ``activation_checkpointing``: per block, the attention half and the dense FFN (and, in MoE blocks, the
        expert FFNs) keep only their inputs and recompute in the backward pass; the router runs once.
        """
        for block in self.blocks:
            block.recompute = activation_checkpointing
            if hasattr(block, "moe"):
                block.moe.experts.recompute = activation_checkpointing
            if compile_blocks:
                block.mix = torch.compile(block.mix, fullgraph=True)
                block.dense_ffn = torch.compile(block.dense_ffn, fullgraph=True)

    def reset_parameters(self, seed: int) -> None:
        """Copy every parameter's global starting value (``locmoe.model_spec.initial_value``, the same numbers the
        MindSpore model starts from), keeping this rank's experts."""
        shapes = parameter_shapes(self.cfg)
        local: dict[str, torch.Tensor] = {n: p for n, p in self.named_parameters()}
        local.update({n: b for n, b in self.named_buffers() if n in shapes})
        with torch.no_grad():
            for name, value in initial_state(self.cfg, seed, local, list(self.expert_ids())):
                local[name].copy_(torch.from_numpy(value))

    def check_finite_inputs(self) -> None:
        """Raise if an MoE layer saw NaN/Inf input since the last call (``moe.check_finite``; a host sync)."""
        for i in self.moe_layers:
            self.blocks[i].moe.check_finite_inputs()

    def expert_ids(self) -> tuple:
        """Global ids of the experts this rank holds (in slot order)."""
        block = self.blocks[self.moe_layers[0]] if self.moe_layers else None
        return block.moe.ep.local_experts if block is not None else ()
