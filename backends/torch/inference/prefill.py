"""Prefill throughput of an :class:`InferenceModel` in one execution mode, and what each MoE layer did
(shared by ``locmoe bench prefill``, through :func:`prefill_rows`, and ``scripts/bench/prefill.py``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from backends.torch.inference.model import InferenceModel
from backends.torch.inference.options import ServeOptions
from backends.torch.inference.timing import time_call


@dataclass
class PrefillResult:
    label: str
    tokens: int  # over all ranks, per forward
    seconds: float  # per forward (median)
    layers: list = field(default_factory=list)  # one dict per MoE layer (rank 0's view)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def random_prompts(vocab: int, batch: int, length: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g).to(device)


def measure_prefill(
    model: InferenceModel, tokens: torch.Tensor, opts: ServeOptions, label: str, reps: int = 3, rounds: int = 3
) -> PrefillResult:
    """Time ``model(tokens, last_only=True)`` under ``opts``, then run once more recording every MoE layer
    (chunks, kernels, predicted and measured expert-stage time); collective under torchrun."""
    device = tokens.device
    group = model.group
    barrier = (lambda: dist.barrier(group=group.handle)) if group.size > 1 else None
    model.options = dataclasses.replace(opts, record=False, timeline=False)
    seconds = time_call(
        lambda: model(tokens, last_only=True), device, warmup=1, reps=reps, rounds=rounds, barrier=barrier
    )
    total = tokens.numel()
    if group.size > 1:
        t = torch.tensor([total], device=device)
        dist.all_reduce(t, group=group.handle)
        total = int(t)
    model.options = dataclasses.replace(opts, record=True, timeline=True)
    model.clear_calls()
    model(tokens, last_only=True)
    layers = [layer_row(c) for c in model.moe_calls()]
    model.clear_calls()
    model.options = dataclasses.replace(opts, record=False, timeline=False)
    return PrefillResult(label, total, seconds, layers)


def prefill_rows(
    model: InferenceModel, opts: ServeOptions, lengths: Sequence[int], batch: int, reps: int
) -> list[dict]:
    """``locmoe bench prefill``'s table: per prompt length, ``batch`` random prompts a rank measured plain and
    (unless ``opts`` is plain) in ``opts``' mode; one row each. Collective under torchrun."""
    me = model.group.my_index
    modes = [dataclasses.replace(opts, mode="plain", chunks=0)] + ([opts] if opts.mode != "plain" else [])
    rows = []
    for S in lengths:
        tokens = random_prompts(model.cfg.model.vocab_size, batch, S, 1000 * S + me, model.rope_cos.device)
        for o in modes:
            r = measure_prefill(model, tokens, o, o.mode, reps=reps)
            chunks = sorted({layer["chunks"] for layer in r.layers})
            rows.append(
                {
                    "length": S,
                    "mode": o.mode,
                    "chunks": ",".join(map(str, chunks)),
                    "tokens": r.tokens,
                    "ms": r.seconds * 1e3,
                    "tokens_per_s": r.tokens_per_s,
                }
            )
    return rows


def layer_row(call) -> dict:
    t = call.timeline
    measured = t.get("rows_back", 0.0) - t.get("send_ready", 0.0) if t else None
    loads = np.asarray(call.loads, dtype=np.float64)
    kernels = sorted(set(call.kernels))
    return {
        "layer": call.layer,
        "chunks": call.chunks,
        "order": call.order,
        "kernel": "+".join(kernels),
        "max_over_mean_load": float(loads.max() / max(loads.mean(), 1e-9)),
        "predicted_ms": None if call.predicted_s is None else call.predicted_s * 1e3,
        "predicted_serial_ms": None if call.predicted_serial_s is None else call.predicted_serial_s * 1e3,
        "measured_ms": measured,
        "error_pct": None
        if call.predicted_s is None or not measured
        else 100.0 * (call.predicted_s * 1e3 - measured) / measured,
        "timeline_ms": t,
    }
