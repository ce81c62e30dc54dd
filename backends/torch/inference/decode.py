"""Greedy and top-p decoding with an :class:`InferenceModel`, prompts shared out over the EP group.

Every forward is collective (the MoE layers exchange tokens), so every rank runs the same number of
forwards: rank r serves prompts r, r+W, ...; a rank with no prompt left in a round decodes a one-token
placeholder and throws it away. No KV cache: each step re-runs the whole sequence (prefill is what the
expert pipeline speeds up; this path is for correctness and small models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from backends.torch.inference.model import InferenceModel
from locmoe.inference.errors import InferenceError


@dataclass(frozen=True)
class Sampling:
    """greedy: argmax; otherwise nucleus sampling over the smallest set of tokens with mass >= top_p."""

    greedy: bool = True
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.top_p <= 1:
            raise InferenceError(f"top_p = {self.top_p}; it must be in (0, 1]")
        if self.temperature <= 0:
            raise InferenceError(f"temperature = {self.temperature}; it must be > 0")


def next_token(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
    """logits: [B, V] -> [B] token ids."""
    if s.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / s.temperature, dim=-1).cpu()
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the better tokens
    sorted_p = sorted_p.masked_fill(before >= s.top_p, 0.0)  # the top token always stays
    pick = torch.multinomial(sorted_p, 1, generator=gen)
    return idx.gather(1, pick)[:, 0].to(logits.device)


def check_prompts(prompts: Sequence[Sequence[int]], context: int) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise InferenceError(f"prompt {i} is empty")
        if len(p) > context:
            raise InferenceError(
                f"prompt {i} has {len(p)} tokens, longer than the model's context of {context} "
                "tokens (model.max_seq_len); shorten it"
            )


def generate(
    model: InferenceModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    domain: Optional[int] = None,
) -> list[list[int]]:
    """New tokens for every prompt (the same list on every rank). Stops at ``max_new_tokens`` or when the
    sequence fills the context."""
    check_prompts(prompts, model.context)
    W, me = model.group.size, model.group.my_index
    device = model.rope_cos.device
    gen = torch.Generator().manual_seed(sampling.seed + me)
    mine: dict[int, list[int]] = {}
    for start in range(0, len(prompts), W):
        i = start + me
        seq = list(prompts[i]) if i < len(prompts) else None
        new: list[int] = []
        # NOTE: every rank runs the round's forwards (they are collective): as many as its longest budget, a
        # budget being what fits the context; more would decode placeholders until max_new_tokens (10^9)
        last = min(start + W, len(prompts))
        steps = max(min(max_new_tokens, model.context - len(prompts[j])) for j in range(start, last))
        for _ in range(steps):
            window = seq + new if seq is not None else [0]
            if len(window) >= model.context:
                window = [0]  # full: keep taking part in the collectives, discard the result
                seq_done = True
            else:
                seq_done = seq is None
            tokens = torch.tensor([window], device=device)
            dom = None if domain is None else torch.tensor([domain], device=device)
            tok = next_token(model(tokens, dom, last_only=True), sampling, gen)
            if not seq_done:
                new.append(int(tok[0]))
        if seq is not None:
            mine[i] = new
    return _share(mine, len(prompts), W)


def _share(mine: dict, n: int, W: int) -> list[list[int]]:
    if W == 1 or not dist.is_initialized():
        return [mine[i] for i in range(n)]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    merged = {k: v for p in parts for k, v in p.items()}
    return [merged[i] for i in range(n)]
