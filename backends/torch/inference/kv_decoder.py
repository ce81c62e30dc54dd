"""KV-cache forward passes over an :class:`InferenceModel`'s own blocks: ``prefill`` runs the left-padded
prompts once and fills the cache, ``step`` runs one token per row from the cache (fixed shapes, no host
sync on one process: it can be captured as a CUDA graph, see ``cuda_graph.py``).

Legend: B rows, P prompt slots, S tokens this call, C cache slots, d model dim, V vocabulary.

Padding never reaches an MoE layer: at prefill only the real tokens are routed (so they take no expert
rows and, under any capacity, cannot change a real token's routing); every row of a decode step is a real
token. On one process the MoE layers run :func:`moe_step` (same router, same weights, dropless); across an
EP group they run the collective :class:`InferenceMoE` (every rank calls each step).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from backends.torch.inference.kv_cache import KVCache, attention_mask, cached_attention, positions
from backends.torch.inference.model import InferenceModel
from backends.torch.inference.moe_step import check_cacheable, moe_step, plain_router


class KVDecoder:
    def __init__(self, model: InferenceModel, batch: int, capacity: int):
        """A cache of ``capacity`` slots for ``batch`` rows, in the model's dtype and on its device."""
        m = model.cfg.model
        check_cacheable(model.cfg.moe.router.kind, model.cfg.moe.capacity.mode)
        self.model, self.batch = model, batch
        self.context = model.context
        dtype, device = model.embed.weight.dtype, model.embed.weight.device
        self.cache = KVCache.allocate(m.n_layers, batch, m.n_heads, capacity, m.d_model // m.n_heads, dtype, device)
        self.fast_moe = {i: _one_process(model.layers[i].moe) for i in model.moe_layers}

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths: list[int], domain: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens: [B, P] prompts right-aligned (left padding), ``lengths`` [B] their real lengths (host),
        domain: [B] -> logits [B, V] of each row's last prompt token (slot P-1). Resets the cache."""
        B, P = tokens.shape
        dev = tokens.device
        self.cache.pad.copy_(torch.tensor([P - n for n in lengths]))
        # the host knows the padding, so the real tokens' flat indices cost no device sync
        real_idx = torch.cat([b * P + torch.arange(P - n, P) for b, n in enumerate(lengths)]).to(dev)
        x = self._blocks(tokens, torch.arange(P, device=dev), P, domain, real_idx)
        return self._logits(x[:, -1])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, slot: torch.Tensor, domain: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens: [B] the previous step's tokens, written at cache slot ``slot`` ([1] long, on the device)
        -> logits [B, V] of the next token. Attends over the whole cache (masked): fixed shapes."""
        x = self._blocks(tokens[:, None], slot, self.cache.capacity, domain, None)
        return self._logits(x[:, 0])

    def _blocks(
        self,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        kv_len: int,
        domain: Optional[torch.Tensor],
        real_idx: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """tokens [B, S] at cache ``slots`` [S] -> hidden states [B, S, d] after the last block (before the
        final norm); ``real_idx`` the flat indices of the tokens the MoE layers see (None: all)."""
        m, cache = self.model, self.cache
        B, S = tokens.shape
        pos = positions(slots, cache.pad, self.context)  # [B, S]
        cos, sin = m.rope_cos[pos], m.rope_sin[pos]  # [B, S, hd/2]
        mask = attention_mask(slots, cache.pad, kv_len)
        dom = None if domain is None else domain[:, None].expand(B, S).reshape(-1)
        ids = tokens.reshape(-1)
        if real_idx is not None:
            ids = ids.index_select(0, real_idx)
            dom = None if dom is None else dom.index_select(0, real_idx)
        per_rank: list = []  # the EP group's token counts, gathered once per call (collective path)
        x = m.embed(tokens)
        for i, block in enumerate(m.blocks):
            x = x + cached_attention(
                block.attn, block.attn_norm(x), cos, sin, cache.k[i], cache.v[i], slots, mask, kv_len
            )
            h = block.ffn_norm(x)
            if hasattr(block, "ffn"):
                x = x + block.ffn(h)
                continue
            flat = h.reshape(B * S, -1)
            if real_idx is not None:
                flat = flat.index_select(0, real_idx)
            y = self._moe(i, flat, ids, dom, per_rank)
            if real_idx is not None:
                y = torch.zeros_like(h.reshape(B * S, -1)).index_copy_(0, real_idx, y)
            x = x + y.view(B, S, -1)
        return x

    def _moe(
        self, layer: int, x: torch.Tensor, ids: torch.Tensor, dom: Optional[torch.Tensor], per_rank: list
    ) -> torch.Tensor:
        moe = self.model.blocks[layer].moe
        if self.fast_moe[layer]:
            return moe_step(moe.router, moe.experts, x, ids, dom)
        # collective: every rank of the EP group calls this the same number of times
        if not per_rank:
            per_rank.extend(self.model._tokens_per_rank(x.shape[0], x.device))
        return moe(x, ids, dom, per_rank, self.model.options)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, d] last block's output -> [B, V]."""
        m = self.model
        return F.linear(m.norm(x), m.embed.weight if m.lm_head is None else m.lm_head.weight)


def _one_process(moe) -> bool:
    """The sync-free MoE path needs every expert in this process, in id order, and a router whose options
    :func:`moe_step` reproduces."""
    E = moe.moe.num_experts
    return not moe.ep.distributed and tuple(moe.ep.local_experts) == tuple(range(E)) and plain_router(moe.moe.router)
