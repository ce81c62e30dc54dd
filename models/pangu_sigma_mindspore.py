"""PanGu-Sigma-style decoder in MindSpore, the twin of ``models.pangu_sigma_torch``: dense blocks at the bottom,
MoE blocks above (Random Routed Experts: a sample's domain picks its expert group, the router picks inside it).
Pre-norm (RMSNorm), rotary attention, SwiGLU FFNs. Parameter names follow ``locmoe.model_spec`` (the checkpoint
contract), so a checkpoint of either backend loads into the other, and the same seed gives the same weights.

With ``parallel.jit`` the attention and the dense SwiGLU FFN are compiled (``mindspore.jit`` of pure functions);
the MoE layer stays PyNative because its dispatcher reads split sizes on the host.
"""

from __future__ import annotations

import functools
import typing
from typing import Callable, Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from locmoe.config.schema import JobConfig, ModelConfig
from locmoe.model_spec import initial_state, moe_layer_indices, parameter_shapes
from locmoe.moe.records import MoEMetrics
from locmoe.parallel.context import ExpertParallel


def _weight(*shape: int) -> Parameter:
    # zeros until reset_parameters / a checkpoint fills them; the name comes from the attribute path
    return Parameter(Tensor(np.zeros(shape, np.float32)), name="weight")


def cast(t: Tensor, dtype) -> Tensor:
    """t in ``dtype`` (no operator when it already is)."""
    return t if t.dtype == dtype else t.astype(dtype)


_MATMUL_NT = ops.MatMul(transpose_b=True)
# the attention's batched products as BatchMatMul with the transpose in the kernel: ops.matmul's gradient
# transposes its operands first ([B, H, S, S] scores: ~1.6 ms each on CPU, profiled), BatchMatMul's bprop
# passes transpose flags instead
_BMM, _BMM_NT = ops.BatchMatMul(), ops.BatchMatMul(transpose_b=True)


def linear(x: Tensor, w: Tensor) -> Tensor:
    """y = x W^T in x's dtype, W: [out, in] (the torch layout, so checkpoints need no transpose; fp32 master
    weights are cast for a bfloat16 x). One 2-D MatMul with W transposed in the kernel: a [B, S, d] x [d, out]
    matmul broadcast W to a batch and its backward transposed it (MindSpore's CPU kernels, measured)."""
    y = _MATMUL_NT(x.reshape(-1, x.shape[-1]), cast(w, x.dtype))
    return y.reshape(*x.shape[:-1], w.shape[0])


class Linear(nn.Cell):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = _weight(d_out, d_in)

    def construct(self, x: Tensor) -> Tensor:
        return linear(x, self.weight)


class Embedding(nn.Cell):
    def __init__(self, vocab_size: int, d: int):
        super().__init__()
        self.weight = _weight(vocab_size, d)

    def construct(self, tokens: Tensor) -> Tensor:
        return ops.gather(self.weight, tokens, 0)


class RMSNorm(nn.Cell):
    """x · rsqrt(mean(x²) + eps) · weight over the last axis, its reductions and broadcasts as matmuls.

    MindSpore's CPU reductions run at ~0.25 G elements/s (ReduceMean forward; the ReduceSum that autodiff
    emits for every broadcast operand, twice per norm), ~1 ms per [2048, 128] each in the compiled step
    (profiled); a matmul with a ones column (the mean) or an outer product (the broadcasts) does the same sums
    in BLAS, and its gradient is a matmul again. The row scale and the weight broadcast together, as one outer
    product r · w of [N, 1] and [1, d]."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(Tensor(np.ones(d, np.float32)), name="weight")
        self.mean_column = Tensor(np.full((d, 1), 1.0 / d, np.float32))

    def construct(self, x: Tensor) -> Tensor:
        # normalise in fp32: bf16's 8-bit mantissa loses the mean square of large activations
        h = x.astype(ms.float32).reshape(-1, x.shape[-1])
        r = ops.rsqrt(ops.matmul(h * h, self.mean_column) + self.eps)  # [N, 1]; h * h: Pow is slower on CPU
        y = h * ops.matmul(r, self.weight.reshape(1, -1))  # [N, d]: h_i,j · r_i · w_j
        return y.reshape(x.shape).astype(x.dtype)


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin: [max_len, head_dim] (fp32, the angles computed as the torch model does), laid out for
    :func:`apply_rotary`: cos repeated per (even, odd) feature pair, sin as (-sin, +sin) per pair."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    angles = np.outer(np.arange(max_len, dtype=np.float32), inv.astype(np.float32))
    cos, sin = np.cos(angles), np.sin(angles)
    return Tensor(np.repeat(cos, 2, axis=-1)), Tensor(np.stack([-sin, sin], axis=-1).reshape(max_len, head_dim))


def pair_swap(head_dim: int) -> Tensor:
    """[head_dim, head_dim] permutation: x @ P swaps each (even, odd) feature pair (exact: one 1 per column)."""
    P = np.zeros((head_dim, head_dim), np.float32)
    even, odd = np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)
    P[odd, even] = P[even, odd] = 1
    return Tensor(P)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, swap: Tensor) -> Tensor:
    """x: [..., hd]; rotate each (even, odd) feature pair (x1, x2) by its position's angle: (x1·cos - x2·sin,
    x2·cos + x1·sin), the same products and sums as written out per pair (cos, sin broadcast over x). The swap
    of each pair is one 2-D matmul with a permutation (``swap``, :func:`pair_swap`): strided slices and their
    concatenation cost MindSpore's CPU kernels 2.6x more, a batched matmul 2x more (measured)."""
    h = x.astype(ms.float32)
    swapped = ops.matmul(h.reshape(-1, h.shape[-1]), swap).reshape(h.shape)
    return (h * cos + swapped * sin).astype(x.dtype)


@functools.lru_cache(maxsize=8)
def causal_bias(S: int) -> Tensor:
    """[S, S] constant: 0 where a query may look (itself and the past), -inf at the future. Made once per S
    on the host: built from ops it was three kernels per layer and step."""
    return Tensor(np.triu(np.full((S, S), -np.inf, np.float32), 1))


def attention(x: Tensor, cos: Tensor, sin: Tensor, swap: Tensor, wqkv: Tensor, wo: Tensor, n_heads: int) -> Tensor:
    """Causal rotary self-attention of x: [B, S, d] (a pure function of its inputs, so ``mindspore.jit`` can
    compile it and still return gradients for the weights).

    Written for MindSpore's CPU kernels, 2.6x faster forward and backward than the textbook form (measured,
    traced): q, k and v from the row blocks of ``wqkv`` (slicing the [B, S, 3d] product per head cost a 10 ms
    strided slice each), rotated as [B, S, H, hd] before the head transpose, the 1/√hd scale folded into q's
    rotary tables, the causal mask an added bias (where a masked fill ran forward and backward over the scores)."""
    B, S, d = x.shape
    hd = d // n_heads
    if S < cos.shape[0]:  # a slice of the whole table is still a kernel (CPU StridedSlice, ~0.3 ms)
        cos, sin = cos[:S], sin[:S]
    cos, sin = cos.reshape(S, 1, hd), sin.reshape(S, 1, hd)  # over [B, S, H, hd]
    w = ops.split(wqkv, d, axis=0)  # one Split (its gradient one Concat), not three slices and their sum

    def heads(i: int) -> Tensor:  # [B, S, H, hd]
        return linear(x, w[i]).reshape(B, S, n_heads, hd)

    scale = hd**-0.5
    q = apply_rotary(heads(0), cos * scale, sin * scale, swap).transpose(0, 2, 1, 3)  # [B, H, S, hd]
    k = apply_rotary(heads(1), cos, sin, swap).transpose(0, 2, 1, 3)
    v = heads(2).transpose(0, 2, 1, 3)
    scores = cast(_BMM_NT(q, k), ms.float32) + causal_bias(S)  # [B, H, S, S]
    probs = cast(ops.softmax(scores, -1), v.dtype)
    y = _BMM(probs, v)  # [B, H, S, hd]
    return linear(y.transpose(0, 2, 1, 3).reshape(B, S, d), wo)


def swiglu(x: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    return linear(ops.silu(linear(x, w1)) * linear(x, w3), w2)


# NOTE: ast capture of these pure functions; bytecode capture of a Cell method was measured to run but to
# return zero gradients for the Cell's parameters in PyNative (MindSpore 2.10, CPU)
# (``ms.jit(fn)`` returns ``fn`` compiled; unannotated, pyright infers the decorator form's type too)
attention_jit = typing.cast("Callable[..., Tensor]", ms.jit(attention))
swiglu_jit = typing.cast("Callable[..., Tensor]", ms.jit(swiglu))


class Attention(nn.Cell):
    def __init__(self, m: ModelConfig, jit: bool = False):
        super().__init__()
        self.n_heads = m.n_heads
        self.wqkv = Linear(m.d_model, 3 * m.d_model)
        self.wo = Linear(m.d_model, m.d_model)
        self.fn = attention_jit if jit else attention
        self.swap = pair_swap(m.d_model // m.n_heads)

    def construct(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return self.fn(x, cos, sin, self.swap, self.wqkv.weight, self.wo.weight, self.n_heads)


class FeedForward(nn.Cell):
    def __init__(self, d: int, d_ff: int, jit: bool = False):
        super().__init__()
        self.w1, self.w3, self.w2 = Linear(d, d_ff), Linear(d, d_ff), Linear(d_ff, d)
        self.fn = swiglu_jit if jit else swiglu

    def construct(self, x: Tensor) -> Tensor:
        return self.fn(x, self.w1.weight, self.w3.weight, self.w2.weight)


class Block(nn.Cell):
    def __init__(
        self, cfg: JobConfig, layer_id: int, ep: Optional[ExpertParallel], moe_cls: type, compute_dtype=ms.float32
    ):
        """``moe_cls``: the MoE layer of MoE blocks, given by the backend that builds the model
        (``backends.mindspore.moe_layer.MoELayer``)."""
        super().__init__()
        m, jit = cfg.model, cfg.parallel.jit
        self.attn_norm, self.ffn_norm = RMSNorm(m.d_model, m.norm_eps), RMSNorm(m.d_model, m.norm_eps)
        self.attn = Attention(m, jit)
        self.is_moe = ep is not None
        if ep is None:
            self.ffn = FeedForward(m.d_model, m.d_ff, jit)
        else:
            self.moe = moe_cls(cfg.moe, m.d_model, m.vocab_size, ep, layer_id, compute_dtype)

    def mix(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """The attention half: (residual stream after attention, its FFN-normed input)."""
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x, self.ffn_norm(x)

    def construct(self, x, cos, sin, token_ids, domain):
        x, h = self.mix(x, cos, sin)
        if not self.is_moe:
            return x + self.ffn(h), None, None
        y, aux, metrics = self.moe(h, token_ids=token_ids, domain=domain)  # dropped copies: y = 0 here
        return x + y, aux, metrics


def compute_dtype_of(cfg: JobConfig):
    """``train.dtype`` as the activations' dtype (the parameters and AdamW stay float32)."""
    return ms.bfloat16 if cfg.train.dtype == "bfloat16" else ms.float32


class PanGuSigma(nn.Cell):
    def __init__(self, cfg: JobConfig, ep: ExpertParallel, moe_cls: type, compute_dtype=None):
        """``moe_cls``: the MoE layers' class (see :class:`Block`); ``compute_dtype``: the activations' dtype,
        ``train.dtype``'s unless given (the tests give float16, which CPU kernels have, for the mixed-precision
        path that bfloat16 takes on Ascend)."""
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.compute_dtype = compute_dtype or compute_dtype_of(cfg)
        self.moe_layers = moe_layer_indices(m)
        self.embed = Embedding(m.vocab_size, m.d_model)
        self.layers = nn.CellList(
            [
                Block(cfg, i, ep if i in self.moe_layers else None, moe_cls, self.compute_dtype)
                for i in range(m.n_layers)
            ]
        )
        self.norm = RMSNorm(m.d_model, m.norm_eps)
        self.lm_head = None if m.tie_embeddings else Linear(m.d_model, m.vocab_size)
        self.rope_cos, self.rope_sin = rotary_tables(m.d_model // m.n_heads, m.max_seq_len, m.rope_theta)

    def construct(self, tokens: Tensor, domain: Optional[Tensor] = None) -> tuple[Tensor, Tensor, list[MoEMetrics]]:
        """tokens: [B, S], domain: [B] -> (logits [B, S, V], summed auxiliary objective, per-MoE-layer metrics)."""
        B, S = tokens.shape
        if S > self.rope_cos.shape[0]:
            raise ValueError(f"sequence length {S} exceeds model.max_seq_len ({self.rope_cos.shape[0]})")
        dom = None if domain is None else ops.broadcast_to(domain[:, None], (B, S))
        x = cast(self.embed(tokens), self.compute_dtype)
        aux, metrics = ops.zeros((), ms.float32), []
        for block in self.layers:
            x, a, m = block(x, self.rope_cos, self.rope_sin, tokens, dom)
            if a is not None:
                aux, metrics = aux + a, metrics + [m]
        x = self.norm(x)
        logits = linear(x, self.embed.weight if self.lm_head is None else self.lm_head.weight)
        return logits, aux, metrics

    def node_preference(self, tokens: Tensor, domain: Optional[Tensor] = None, through_blocks: bool = True) -> Tensor:
        """tokens: [B, S] -> [B, N]: the first MoE layer's gate probability on each node, averaged over each
        sequence (``locmoe.data.placement``). ``through_blocks``: on that layer's real input (the blocks below it
        and its attention half run), else on the normed token embeddings (nothing runs but the gate)."""
        B, S = tokens.shape
        dom = None if domain is None else ops.broadcast_to(domain[:, None], (B, S))
        x = cast(self.embed(tokens), self.compute_dtype)
        for block in self.layers:
            if block.is_moe:
                h = block.mix(x, self.rope_cos, self.rope_sin)[1] if through_blocks else block.ffn_norm(x)
                pref = block.moe.node_preference(h, dom).mean(axis=1)
                return ops.stop_gradient(pref)  # pyright: ignore[reportReturnType]  # unannotated: returns its input
            if through_blocks:
                x, _, _ = block(x, self.rope_cos, self.rope_sin, tokens, dom)
        raise ValueError("node_preference: the model has no MoE layer")

    def named_state(self) -> dict[str, Parameter]:
        """Every checkpointed tensor of this rank by its ``locmoe.model_spec`` name (experts: this rank's slots)."""
        names = set(parameter_shapes(self.cfg))
        return {n: p for n, p in self.parameters_and_names() if n in names}

    def reset_parameters(self, seed: int) -> None:
        """Copy every parameter's global starting value (``locmoe.model_spec.initial_value``, the same numbers the
        torch model starts from), keeping this rank's experts."""
        own = self.named_state()
        for name, value in initial_state(self.cfg, seed, own, list(self.expert_ids())):
            own[name].set_data(Tensor(value))

    def expert_ids(self) -> tuple:
        """Global ids of the experts this rank holds (in slot order)."""
        return self.layers[self.moe_layers[0]].moe.ep.local_experts if self.moe_layers else ()
