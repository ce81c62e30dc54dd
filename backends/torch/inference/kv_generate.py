"""Batched generation with the KV cache: prefill once, then one token per step; greedy or temperature /
top-p sampling from a seeded generator on the device; stop at EOS (checked every ``eos_check_every``
steps: one host sync per check, not per step), at ``max_new_tokens``, or when a row fills the context.

    gen = CachedGenerator(model, batch=32, capacity=128 + 256, cuda_graph=True)   # reusable
    tokens, timing = gen.run(prompts, max_new_tokens=256, sampling=Sampling())
    new, stats = generate_cached(model, prompts, 32)          # any number of prompts, in batches

The no-cache ``decode.generate`` (every step re-runs the sequence) stays the reference it is tested
against (``tests/inference/test_kv_cache.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from backends.torch.inference.cuda_graph import GraphedStep, graphable
from backends.torch.inference.decode import Sampling, _share, check_prompts
from backends.torch.inference.kv_decoder import KVDecoder
from backends.torch.inference.model import InferenceModel
from backends.torch.inference.timing import sync
from locmoe.inference.errors import InferenceError


def sample_tokens(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
    """logits: [B, V] -> [B] token ids, on the device without a host sync.

    Top-p keeps the smallest set of best tokens with mass >= top_p (the best always); the draw is an
    exponential race, argmax(p / e) with e ~ Exp(1), which picks token i with probability p_i (what
    ``torch.multinomial`` does, minus its host-side checks)."""
    if s.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p
    sorted_p = sorted_p.masked_fill(before >= s.top_p, 0.0)
    race = sorted_p / torch.empty_like(sorted_p).exponential_(generator=gen)
    return idx.gather(1, race.argmax(dim=-1, keepdim=True))[:, 0]


@dataclass
class BatchTiming:
    first_token_s: float  # prefill + the first token back on the host
    decode_s: float  # the decode steps after it (synchronised)
    steps: int  # decode steps run
    new_tokens: int  # tokens kept (after EOS / budget trimming)


class CachedGenerator:
    """A :class:`KVDecoder` for ``batch`` rows and ``capacity`` cache slots (prompt + new tokens), with its
    decode step optionally captured as a CUDA graph; reusable for any prompts that fit."""

    def __init__(
        self,
        model: InferenceModel,
        batch: int,
        capacity: int,
        cuda_graph: bool = False,
        domain: Optional[int] = None,
        compile_step: bool = False,
    ):
        """``compile_step``: the decode step through ``torch.compile`` (fused element-wise kernels; its
        first call compiles), captured as a CUDA graph on top when ``cuda_graph``."""
        self.model, self.batch = model, batch
        self.device = model.embed.weight.device
        self.decoder = KVDecoder(model, batch, capacity)
        self.domain = None if domain is None else torch.full((batch,), domain, dtype=torch.long, device=self.device)
        if compile_step:
            self.decoder.step = torch.compile(self.decoder.step, dynamic=False)
        self.step = self.decoder.step
        if cuda_graph:
            ok, why = graphable(self.decoder)
            if not ok:
                raise InferenceError(f"--cuda-graph: {why}")
            self.step = GraphedStep(self.decoder, self.domain)

    def run(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling = Sampling(),
        eos_id: Optional[int] = None,
        steps: Optional[int] = None,
        eos_check_every: int = 16,
        seed_offset: int = 0,
    ) -> tuple[list[list[int]], BatchTiming]:
        """New tokens for each of ``prompts`` (at most ``batch``; the remaining rows decode a placeholder).

        ``steps`` forces the number of decode steps (an EP group must agree on it; EOS then never ends the
        loop early); by default max(budget) - 1, a row's budget being min(max_new_tokens, context - its
        length)."""
        if not 0 < len(prompts) <= self.batch:
            raise InferenceError(f"{len(prompts)} prompts for a generator of batch {self.batch}")
        context = self.model.context
        check_prompts(prompts, context)
        rows = [list(p) for p in prompts] + [[0]] * (self.batch - len(prompts))
        lengths = [len(p) for p in rows]
        budgets = [max(0, min(max_new_tokens, context - n)) for n in lengths[: len(prompts)]]
        forced = steps is not None
        steps = max(max(budgets) - 1, 0) if steps is None else steps
        P = max(lengths)
        if P + steps > self.decoder.cache.capacity:
            raise InferenceError(
                f"{P} prompt slots + {steps} decode steps exceed the cache of "
                f"{self.decoder.cache.capacity} slots; build the generator with a larger capacity"
            )
        tokens = torch.tensor([[0] * (P - len(r)) + r for r in rows], dtype=torch.long).to(self.device)
        gen = torch.Generator(device=self.device).manual_seed(sampling.seed + seed_offset)
        sync(self.device)
        t0 = time.perf_counter()
        tok = sample_tokens(self.decoder.prefill(tokens, lengths, self.domain), sampling, gen)
        out = torch.empty(self.batch, steps + 1, dtype=torch.long, device=self.device)
        out[:, 0] = tok
        tok.cpu()  # the first token is on the host
        t1 = time.perf_counter()
        finished = None if eos_id is None else tok == eos_id
        slot = torch.empty(1, dtype=torch.long, device=self.device)
        done = 0
        for t in range(steps):
            slot.fill_(P + t)
            tok = sample_tokens(self.step(tok, slot, self.domain), sampling, gen)
            out[:, t + 1] = tok
            done = t + 1
            if finished is not None:
                finished |= tok == eos_id
                if not forced and done % eos_check_every == 0 and bool(finished[: len(prompts)].all()):
                    break
        host = out[:, : done + 1].cpu().tolist()
        t2 = time.perf_counter()
        new = [_trim(host[b], budgets[b], eos_id) for b in range(len(prompts))]
        return new, BatchTiming(t1 - t0, t2 - t1, done, sum(len(x) for x in new))


def _trim(row: list[int], budget: int, eos_id: Optional[int]) -> list[int]:
    row = row[:budget]
    if eos_id is not None and eos_id in row:
        row = row[: row.index(eos_id) + 1]  # EOS is kept, as transformers' generate does
    return row


@dataclass
class GenerationStats:
    prompts: int
    new_tokens: int
    first_token_s: float  # of the first batch
    total_s: float
    decode_steps: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0


def generate_cached(
    model: InferenceModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    domain: Optional[int] = None,
    eos_id: Optional[int] = None,
    batch_size: int = 32,
    cuda_graph: bool = False,
) -> tuple[list[list[int]], GenerationStats]:
    """New tokens for every prompt (the same list on every rank), ``batch_size`` prompts at a time.

    Under an EP group of W processes rank r serves prompts r, r+W, ...; every rank runs the same rounds
    and the same number of decode steps per round (computed from all prompts, which every rank has)."""
    if max_new_tokens < 1:
        raise InferenceError(f"max_new_tokens = {max_new_tokens}; it must be >= 1")
    check_prompts(prompts, model.context)
    W, me = model.group.size, model.group.my_index
    rounds = _rounds(len(prompts), W, batch_size)
    plans = []  # per round: (decode steps, cache slots), the same on every rank
    for per_rank in rounds:
        lengths = [len(prompts[i]) for ids in per_rank for i in ids]
        steps = max(0, max(min(max_new_tokens, model.context - n) for n in lengths) - 1)
        plans.append((steps, max(lengths) + steps))
    rows = max(len(ids) for per_rank in rounds for ids in per_rank)
    gen = CachedGenerator(model, rows, max(c for _, c in plans), cuda_graph, domain)
    mine: dict[int, list[int]] = {}
    first, steps_run, t0 = None, 0, time.perf_counter()
    for r, (per_rank, (steps, _)) in enumerate(zip(rounds, plans)):
        ids = per_rank[me]
        batch = [prompts[i] for i in ids] or [[0]]  # a rank without prompts still takes part
        new, timing = gen.run(
            batch, max_new_tokens, sampling, eos_id, steps=steps if W > 1 else None, seed_offset=me + r * W
        )
        first = timing.first_token_s if first is None else first
        steps_run += timing.steps
        mine.update({i: new[j] for j, i in enumerate(ids)})
    total = time.perf_counter() - t0
    out = _share(mine, len(prompts), W)
    return out, GenerationStats(len(prompts), sum(len(x) for x in out), first or 0.0, total, steps_run)


def _rounds(n: int, W: int, batch_size: int) -> list[list[list[int]]]:
    """rounds[r][q]: the prompt indices rank q decodes in round r (rank q owns q, q+W, ...)."""
    if batch_size < 1:
        raise InferenceError(f"batch size {batch_size}; it must be >= 1")
    owned = [list(range(q, n, W)) for q in range(W)]
    count = max((len(o) + batch_size - 1) // batch_size for o in owned)
    return [[o[r * batch_size : (r + 1) * batch_size] for o in owned] for r in range(count)]
