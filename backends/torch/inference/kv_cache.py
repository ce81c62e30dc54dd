"""The preallocated key/value cache of a batch, and attention over it with the training blocks' weights.

Legend: B batch rows, S new tokens this call (the prompt at prefill, 1 per decode step), C cache slots,
H heads, hd head size, L blocks.

Batching is **left padding with an attention mask**: row b's prompt is right-aligned in slots
``pad[b] .. P-1`` (P the longest prompt), and every decode step writes the same slot for every row
(``P + t``), so one slot index serves the whole batch and the shapes never change (what CUDA graphs need).
Rotary positions are each row's own (``slot - pad[b]``), so a row computes what it would alone; a query
sees the keys of its own row from its first real slot up to itself. A padding query sees only itself, so
its (discarded) row stays finite and no NaN can reach the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.pangu_sigma_torch import Attention, apply_rotary


@dataclass
class KVCache:
    """Keys and values of every block: k, v [L, B, H, C, hd]; ``pad`` [B] leading padding slots per row."""

    k: torch.Tensor
    v: torch.Tensor
    pad: torch.Tensor

    @staticmethod
    def allocate(
        layers: int, batch: int, heads: int, capacity: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> "KVCache":
        shape = (layers, batch, heads, capacity, head_dim)
        # zeros, not empty: a slot is always written before any query may see it, but zeros keep a stray
        # read finite (0 * garbage could be NaN)
        return KVCache(
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(shape, dtype=dtype, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


def positions(slots: torch.Tensor, pad: torch.Tensor, context: int) -> torch.Tensor:
    """[B, S] each row's own rotary position of ``slots`` [S]; padding (and slots past a row's context,
    whose outputs are discarded) are clamped into the table."""
    return (slots[None, :] - pad[:, None]).clamp(0, context - 1)


def attention_mask(slots: torch.Tensor, pad: torch.Tensor, kv_len: int) -> torch.Tensor:
    """[B, 1, S, kv_len] True where query slot ``slots[s]`` of row b may attend to key slot j: causal, from
    the row's first real slot on, and always to itself."""
    j = torch.arange(kv_len, device=slots.device)
    q = slots[None, :, None]  # [1, S, 1]
    real = j[None, None, :] >= pad[:, None, None]  # [B, 1, kv_len]
    return ((j <= q) & (real | (j == q)))[:, None]


def cached_attention(
    attn: Attention,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    mask: torch.Tensor,
    kv_len: int,
) -> torch.Tensor:
    """The training block's attention (its ``wqkv``/``wo`` weights, the same rotary) over the cache.

    x: [B, S, d]; cos, sin: [B, S, hd/2] each row's positions; k_cache, v_cache: [B, H, C, hd] this block's
    slice (written at ``slots`` [S]); mask: [B, 1, S, kv_len] over the first ``kv_len`` slots -> [B, S, d].
    """
    B, S, d = x.shape
    q, k, v = attn.wqkv(x).view(B, S, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, S, hd]
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, hd/2]
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k_cache.index_copy_(2, slots, k)
    v_cache.index_copy_(2, slots, v)
    y = F.scaled_dot_product_attention(q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len], attn_mask=mask)
    return attn.wo(y.transpose(1, 2).reshape(B, S, d))
