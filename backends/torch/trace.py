"""Record a routing trace (``locmoe trace``): run a trained checkpoint over held-out text in one process and
write every MoE layer's expert choices, the input of the placement planners (``locmoe plan``).

One process emulates the topology the checkpoint was trained on, so the LocMoE rule (which depends on which
experts are on-node) chooses exactly as it did in training. The choices are the router's *before* capacity:
a dropped copy still records where it wanted to go, which is what placement must serve.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from backends.torch.checkpoint import load_model_weights
from backends.torch.distributed import init_distributed
from backends.torch.train import build_model
from locmoe.checkpoint.directory import load_state, resolve, tokenizer_spec
from locmoe.config import ConfigError, config_from_dict
from locmoe.data import BatchSampler, load_corpus, load_tokenizer
from locmoe.placement.trace import TraceError, TraceWriter, fingerprint_from_config


def trace_config(checkpoint: Path, data_overrides: list[str]):
    """The checkpoint's config on one CPU process emulating its training topology, with data overrides."""
    state = load_state(checkpoint)
    cfg = config_from_dict(state["config"])
    if cfg.moe.router.kind == "expert_choice":
        raise TraceError(
            "router expert_choice picks tokens per expert, not k experts per token: a trace "
            "records [tokens, k] choices; trace a token-choice router (locmoe, gshard, switch, hash)"
        )
    lay = state["layout"]
    parallel = dataclasses.replace(
        cfg.parallel, device="cpu", nodes=lay["nodes"], devices_per_node=lay["devices_per_node"], expert_parallel_size=0
    )
    cfg = dataclasses.replace(cfg, parallel=parallel)
    if data_overrides:
        from locmoe.config.loader import apply_overrides, config_to_dict

        bad = [o for o in data_overrides if not o.startswith("data.")]
        if bad:
            raise ConfigError(
                "--set", f"{bad[0]!r}: trace only overrides data.* fields (the model is the checkpoint's)"
            )
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), data_overrides))
    return cfg


def copies_as_choices(token: torch.Tensor, expert: torch.Tensor, num_tokens: int, k: int) -> np.ndarray:
    """[T, k] expert ids from a layer's copy list (each token has exactly k copies, in choice order)."""
    order = torch.argsort(token, stable=True)
    if token.numel() != num_tokens * k:
        raise TraceError(f"the layer reported {token.numel()} copies for {num_tokens} tokens x k={k}")
    return expert[order].view(num_tokens, k).cpu().numpy()


@torch.no_grad()
def record_trace(
    checkpoint: str | Path, out: str | Path, tokens: int, batch_size: int, data_overrides: Sequence[str] = ()
) -> Path:
    path = resolve(checkpoint)
    cfg = trace_config(path, list(data_overrides))
    ctx = init_distributed(cfg.parallel)
    model = build_model(cfg, ctx)
    load_model_weights(model, path)
    model.eval()
    tokenizer = (
        cfg.data.tokenizer
        if any(o.startswith("data.tokenizer=") for o in data_overrides)
        else tokenizer_spec(cfg.data.tokenizer, path)
    )  # the run's own copy, wherever it was trained
    corpus = load_corpus(cfg.data, load_tokenizer(tokenizer), cfg.moe.domains.num_domains)
    sampler = BatchSampler(corpus, cfg.data.seq_len, batch_size, rank=0, world=1, seed=cfg.data.seed)
    writer = TraceWriter(
        fingerprint_from_config(cfg), source={"checkpoint": str(path), "corpus": corpus.description, "split": "val"}
    )
    k, step = cfg.moe.router.top_k, 0
    assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    while min(writer.tokens_per_layer()) < tokens:
        x, _, d = (torch.from_numpy(a) for a in sampler.batch(step, split="val"))
        _, _, metrics = model(x, d)
        for layer, m in zip(model.moe_layers, metrics):
            writer.add(layer, copies_as_choices(m.token, m.expert, x.numel(), k))
        step += 1
    return writer.save(out)
