"""The PanGu-Sigma-style decoder for serving: the training model's blocks (``models.pangu_sigma_torch``)
with :class:`InferenceMoE` in the MoE blocks, each MoE layer with its own expert placement (an export's
placement table may differ per layer). Same parameter names as ``locmoe.model_spec``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from backends.torch.collectives import Group, all_gather_rows
from backends.torch.distributed import ExpertParallel
from backends.torch.inference.moe import InferenceMoE, LayerCall
from backends.torch.inference.options import ServeOptions
from locmoe.config.schema import JobConfig
from locmoe.inference.errors import InferenceError
from locmoe.model_spec import moe_layer_indices
from models.pangu_sigma_torch import Block, RMSNorm, rotary_tables


class InferenceBlock(Block[InferenceMoE]):
    """The training block with :class:`InferenceMoE` in place of the training MoE layer."""

    def __init__(self, cfg: JobConfig, layer_id: int, ep: Optional[ExpertParallel]):
        super().__init__(cfg, layer_id, ep, moe_cls=InferenceMoE)

    def forward(self, x, cos, sin, token_ids, domain, tokens_per_rank, opts):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        h = self.ffn_norm(x)
        if hasattr(self, "ffn"):
            return x + self.ffn(h)
        B, S, d = h.shape
        y = self.moe(
            h.reshape(-1, d),
            token_ids.reshape(-1),
            None if domain is None else domain.reshape(-1),
            tokens_per_rank,
            opts,
        )
        return x + y.view(B, S, d)


class InferenceModel(nn.Module):
    rope_cos: torch.Tensor  # buffers (``register_buffer``)
    rope_sin: torch.Tensor
    device: torch.device  # set by ``loader.build_inference_model``
    checkpoint: Path  # set by ``loader.load_inference_model``: the resolved checkpoint directory

    def __init__(self, cfg: JobConfig, eps: dict[int, ExpertParallel], group: Group):
        """``eps``: the expert parallelism of each MoE layer index; ``group``: the EP group (token counts)."""
        super().__init__()
        m = cfg.model
        self.cfg, self.group = cfg, group
        self.moe_layers = moe_layer_indices(m)
        self.embed = nn.Embedding(m.vocab_size, m.d_model)
        self.layers = nn.ModuleList(InferenceBlock(cfg, i, eps.get(i)) for i in range(m.n_layers))
        self.norm = RMSNorm(m.d_model, m.norm_eps)
        self.lm_head = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
        cos, sin = rotary_tables(m.d_model // m.n_heads, m.max_seq_len, m.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.options = ServeOptions(mode="plain")

    @property
    def blocks(self) -> Sequence[InferenceBlock]:
        """``layers``, typed: its blocks."""
        return cast("Sequence[InferenceBlock]", self.layers)

    @property
    def context(self) -> int:
        return self.rope_cos.shape[0]

    @property
    def rank(self) -> int:
        """This process's index in the EP group (``locmoe.backend_api.ServedModel``)."""
        return self.group.my_index

    @property
    def world_size(self) -> int:
        return self.group.size

    @torch.no_grad()
    def forward(
        self, tokens: torch.Tensor, domain: Optional[torch.Tensor] = None, last_only: bool = False
    ) -> torch.Tensor:
        """tokens: [B, S], domain: [B] -> logits [B, S, V] ([B, V] with ``last_only``, as prefill needs).

        Collective: every rank of the EP group calls it the same number of times (any B, S per rank)."""
        B, S = tokens.shape
        if S > self.context:
            raise InferenceError(
                f"a sequence of {S} tokens is longer than the model's context (model.max_seq_len = {self.context})"
            )
        tokens_per_rank = self._tokens_per_rank(B * S, tokens.device)
        dom = None if domain is None else domain[:, None].expand(B, S)
        x = self.embed(tokens)
        for block in self.layers:
            x = block(x, self.rope_cos, self.rope_sin, tokens, dom, tokens_per_rank, self.options)
        if last_only:
            x = x[:, -1]
        x = self.norm(x)
        return F.linear(x, self.embed.weight if self.lm_head is None else self.lm_head.weight)

    def _tokens_per_rank(self, T: int, device) -> list:
        # one tiny all-gather per forward: every MoE layer plans with the same, group-wide token counts
        if self.group.size == 1:
            return [T]
        return all_gather_rows(torch.tensor([T], device=device), self.group).tolist()

    def moe_calls(self) -> list[LayerCall]:
        """Records of the MoE layer calls since the last ``clear_calls`` (with ``options.record``)."""
        return [c for i in self.moe_layers for c in self.blocks[i].moe.calls]

    def clear_calls(self) -> None:
        for i in self.moe_layers:
            self.blocks[i].moe.calls.clear()
