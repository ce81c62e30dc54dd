"""What autograd keeps per token between the forward and the backward pass of the torch model, block by block.

Counted from what each op of ``models/pangu_sigma_torch.py`` and ``backends/torch`` saves for its backward, and
checked against the bytes ``torch.autograd.graph.saved_tensors_hooks`` sees on CPU (fp32 and bf16 autocast, eager
and ``torch.compile``d, one and two blocks of each kind: every per-block count matched to 0.1 d per token;
``scripts/bench/memory_plan_check.py`` repeats the check on gloo ranks and on the GPU). Legend: d model width,
f expert width, F dense FFN width, V vocabulary, H heads, E experts, k copies per token, c bytes of the compute
dtype (2 under bf16 autocast, 4 in fp32), r expert rows per token.

- The residual stream stays fp32 under autocast (the embedding is fp32 and ``x + bf16`` promotes), 4 d a copy.
- Attention half, eager: the residual before and after it (8 d), each RMSNorm's fp32 normalised input before
  the weight (8 d), the matmul input (c d), q|k|v (3 c d, kept whole by the v view), rotated q and k (2 c d), the
  attention output and its contiguous copy for ``wo`` (2 c d): 16 d + 8 c d. Compiled (``train.compile``, the
  CUDA default), the norms recompute instead of keeping their fp32 tensors: 8 d + 8 c d.
- Dense SwiGLU half, eager: its input (4 d: the fp32 tensor, or two bf16 casts, one per projection), w1 x,
  w3 x, silu(w1 x) and the product (4 c F); compiled: one cast (c d), w1 x, w3 x and the product (3 c F).
- MoE half: the router's per-token rows (a few E-wide tensors and k-wide indices; a learned gate's input, c d),
  and per routed row the expert input and the returned output (2 c d), w1|w3 x (2 c f), the SwiGLU output
  (c f), and eagerly silu (c f; ``moe.fuse_kernels`` recomputes it on CUDA).
- With activation checkpointing a dense block keeps its input, the residual after attention and the FFN's
  normed input (12 d); an MoE block its input (4 d), the router's rows and each routed row in and out (2 c d);
  the backward re-runs one half of one block at a time (``recompute_per_token``).
- The head: the token ids and targets (16), the final norm (8 d, never compiled), the LM head's input (c d);
  the loss's fp32 log-probabilities (4 V), with their gradient and the fp32 logits' as the backward starts (8 V).
"""

from __future__ import annotations

from dataclasses import dataclass

from locmoe.config.schema import JobConfig

FP32 = 4
BF16 = 2
INDEX = 8  # an int64 token id
# The router's per-token tensors (fp32 scores and probabilities, int64 choices, masks): ~12 E + 56 k bytes,
# measured for the GrAP and the learned gate at E 8, k 2 (0.8 d at d 256); the other routers keep a few more.
ROUTER_PER_EXPERT = 12
ROUTER_PER_COPY = 56


@dataclass(frozen=True)
class Execution:
    """How the blocks run, which decides what autograd keeps for the backward."""

    compute_bytes: int  # BF16 under autocast (train.dtype bfloat16 on an accelerator), else FP32
    compiled: bool  # train.compile: each attention half and dense FFN one torch.compile graph
    fused: bool  # moe.fuse_kernels on CUDA: the experts' SwiGLU a compiled kernel that recomputes silu
    checkpointing: bool  # train.activation_checkpointing

    @staticmethod
    def of(cfg: JobConfig, device: str = "cuda", checkpointing: bool | None = None) -> "Execution":
        """As ``backends.torch.train`` runs ``cfg`` on ``device`` ("cuda" or "cpu"): autocast and compile on an
        accelerator (``train.compile: null``), fp32 and eager on CPU; ``checkpointing`` overrides the config's."""
        accel = device != "cpu"
        compiled = accel if cfg.train.compile is None else bool(cfg.train.compile)
        return Execution(
            compute_bytes=BF16 if cfg.train.dtype == "bfloat16" and accel else FP32,
            compiled=compiled,
            fused=accel and cfg.moe.fuse_kernels,
            checkpointing=cfg.train.activation_checkpointing if checkpointing is None else checkpointing,
        )


def rows_per_token(cfg: JobConfig, exchange: bool) -> float:
    """Expert rows per token of this rank, r: every copy (k) on one rank (the buffer keeps the dropped ones, at
    zero); the factor's fixed slots with ``dispatch_shape: static`` or expert choice; else k (balanced load:
    each rank receives as many copies as it sends)."""
    moe = cfg.moe
    k = moe.router.top_k or 1
    static = moe.dispatch_shape == "static" and moe.capacity.mode == "factor"
    if moe.router.kind == "expert_choice" or (exchange and static):
        return k * moe.capacity.factor
    return float(k)


def attention_per_token(cfg: JobConfig, ex: Execution) -> float:
    """The attention half of a block, uncheckpointed (the residual before and after it included)."""
    d, c = cfg.model.d_model, ex.compute_bytes
    norms = 0 if ex.compiled else 8 * d
    return 8 * d + norms + 8 * c * d + FP32 * cfg.model.n_heads  # + the softmax's log-sum-exp per head


def dense_ffn_per_token(cfg: JobConfig, ex: Execution) -> float:
    d, F, c = cfg.model.d_model, cfg.model.d_ff, ex.compute_bytes
    return c * d + 3 * c * F if ex.compiled else 4 * d + 4 * c * F


def router_per_token(cfg: JobConfig, ex: Execution) -> float:
    """The router's rows, and a learned gate's input (its matmul keeps it in the compute dtype)."""
    r = cfg.moe.router
    learned = r.gate == "dense" and r.kind != "hash"
    rows = ROUTER_PER_EXPERT * cfg.moe.num_experts + ROUTER_PER_COPY * (r.top_k or 1)
    return rows + (ex.compute_bytes * cfg.model.d_model if learned else 0)


def expert_row_bytes(cfg: JobConfig, ex: Execution) -> float:
    """One routed row through the experts: its input and returned output, and the FFN's hidden tensors."""
    d, f, c = cfg.model.d_model, cfg.moe.d_expert, ex.compute_bytes
    if cfg.moe.activation != "swiglu":
        return 2 * c * d + 2 * c * f  # w1 x and gelu(w1 x)
    return 2 * c * d + (3 if ex.fused else 4) * c * f


def moe_ffn_per_token(cfg: JobConfig, ex: Execution, rows: float) -> float:
    return router_per_token(cfg, ex) + rows * expert_row_bytes(cfg, ex)


def block_per_token(cfg: JobConfig, ex: Execution, moe: bool, rows: float) -> float:
    """What one block keeps until its backward, per token of this rank."""
    d, c = cfg.model.d_model, ex.compute_bytes
    if ex.checkpointing:
        if moe:
            return FP32 * d + router_per_token(cfg, ex) + rows * 2 * c * d
        return 3 * FP32 * d
    ffn = moe_ffn_per_token(cfg, ex, rows) if moe else dense_ffn_per_token(cfg, ex)
    return attention_per_token(cfg, ex) + ffn


def recompute_per_token(cfg: JobConfig, ex: Execution, moe: bool, rows: float) -> tuple[float, float]:
    """(attention half, FFN half): what the backward re-materialises of one checkpointed block, one half at a
    time (each is its own checkpoint; its inputs are kept anyway). (0, 0) without checkpointing."""
    if not ex.checkpointing:
        return 0.0, 0.0
    full = Execution(ex.compute_bytes, ex.compiled, ex.fused, checkpointing=False)
    attention = attention_per_token(cfg, full) - FP32 * cfg.model.d_model
    if moe:
        d, c = cfg.model.d_model, ex.compute_bytes
        return attention, rows * (expert_row_bytes(cfg, full) - 2 * c * d)
    return attention, dense_ffn_per_token(cfg, full)


def backward_working_per_token(cfg: JobConfig, ex: Execution, moe: bool, rows: float) -> float:
    """Gradients alive inside one block's backward: the residual's (in and out, fp32), and the largest hidden
    ones (dense: three F-wide; MoE: per row w1|w3 x's, the SwiGLU output's, the row in and out)."""
    d, c = cfg.model.d_model, ex.compute_bytes
    if moe:
        return 2 * FP32 * d + rows * (3 * c * cfg.moe.d_expert + 2 * c * d)
    return 2 * FP32 * d + 3 * c * cfg.model.d_ff


def head_per_token(cfg: JobConfig, ex: Execution) -> float:
    """The token ids and targets, the final norm and the LM head's input (the log-probabilities:
    ``logits_per_token``)."""
    d = cfg.model.d_model
    return 2 * INDEX + 8 * d + ex.compute_bytes * d


def logits_per_token(cfg: JobConfig, ex: Execution, backward: bool) -> float:
    """The loss's fp32 log-probabilities (kept for the backward), and beside them the LM head's output and its
    fp32 copy at the end of the forward, or the gradients of the log-probabilities and of the fp32 logits as
    the backward starts (``backward``)."""
    V = cfg.model.vocab_size
    return FP32 * V + (2 * FP32 * V if backward else (ex.compute_bytes + FP32) * V)
