"""Pretraining loop of the torch backend: ``locmoe train CONFIG`` (any launcher: none, torchrun).

Order of work: check every input (config, data, checkpoint to resume) before writing anything, build the
model, then step: micro-batches → gradient sync → clip → AdamW; log, validate, checkpoint; export the
routers at the end.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch.checkpoint import load_checkpoint, save_checkpoint
from backends.torch.distributed import DistContext, expert_parallel, init_distributed
from backends.torch.optim import all_reduce_mean, clip_grad_norm, make_optimizer, set_lr, sync_gradients
from locmoe.checkpointing import CheckpointError, clean_temporaries, latest, list_checkpoints
from locmoe.config import ConfigError
from locmoe.config.schema import JobConfig
from locmoe.data import BatchSampler, load_corpus, load_tokenizer
from locmoe.schedule import lr_at
from locmoe.train_log import TrainLogger
from models.pangu_sigma_torch import PanGuSigma


def build_model(cfg: JobConfig, ctx: DistContext) -> PanGuSigma:
    model = PanGuSigma(cfg, expert_parallel(ctx, cfg.parallel, cfg.moe.num_experts))
    model.reset_parameters(cfg.train.seed)
    return model.to(ctx.device)


@dataclass
class Batches:
    """This process's view of the data: one rank's rows, or every emulated rank's rows."""
    sampler: BatchSampler
    device: torch.device

    def get(self, step: int, micro: int = 0, split: str = "train"):
        x, y, d = self.sampler.batch(step, micro, split)
        to = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        return to(x), to(y), to(d)


def prepare(cfg: JobConfig, resume: bool):
    """Everything that can fail on bad input, before any output is written."""
    ctx = init_distributed(cfg.parallel)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError("model.vocab_size", f"{cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({tokenizer.vocab_size})")
    corpus = load_corpus(cfg.data, tokenizer, cfg.moe.domains.num_domains)
    ckpt = None
    if resume:
        rejected: list = []
        ckpt = latest(cfg.train.out_dir, rejected)
        if ckpt is None:
            why = f" ({'; '.join(rejected)})" if rejected else ""
            raise CheckpointError(f"--resume: no valid checkpoint in {cfg.train.out_dir}/checkpoints{why}")
        for reason in rejected:
            print(f"warning: skipping a newer checkpoint that does not verify: {reason}")
    elif list_checkpoints(cfg.train.out_dir):
        raise CheckpointError(f"{cfg.train.out_dir} already holds checkpoints: pass --resume to continue, or "
                              "choose another train.out_dir")
    ranks = ctx.layout.topology.world_size if ctx.emulated else 1
    sampler = BatchSampler(corpus, cfg.data.seq_len, cfg.train.batch_size * ranks, ctx.rank, ctx.world_size,
                           cfg.data.seed)
    return ctx, corpus, ckpt, Batches(sampler, ctx.device)


def autocast(cfg: JobConfig, device: torch.device):
    if cfg.train.dtype == "bfloat16" and device.type in ("cuda", "npu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loss_of(model, cfg, x, y, d):
    with autocast(cfg, x.device):
        logits, aux, metrics = model(x, d)
    lm = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
    return lm, aux, metrics


@torch.no_grad()
def validate(model, cfg, batches: Batches, ctx) -> float:
    model.eval()
    losses = [float(loss_of(model, cfg, *batches.get(i, split="val"))[0]) for i in range(cfg.train.eval_batches)]
    model.train()
    return all_reduce_mean([float(np.mean(losses))], ctx, ctx.device)[0]


def moe_scalars(metrics: list, logger: TrainLogger, step: int, layers: list) -> dict:
    """Per-step MoE numbers averaged over layers (one host sync, on logging steps only)."""
    if not metrics:
        return {}
    rows = [m.summary() for m in metrics]
    for layer, m in zip(layers, metrics):
        logger.expert_load(step, layer, m.stats.expert_load.cpu().numpy())
    keys = ("dropped_fraction", "cross_node_fraction", "in_node_fraction", "locality_loss", "aux_loss")
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    bound = [r["capacity_bound"] for r in rows if r["capacity_bound"] is not None]
    out.update(capacity=float(np.mean([r["capacity_max"] for r in rows])),
               max_expert_load=float(np.mean([r["max_expert_load"] for r in rows])),
               cross_node_bytes=float(sum(r["cross_node_bytes"] for r in rows)))
    if bound:
        out["capacity_bound"] = float(np.mean(bound))
    return out


def train(cfg: JobConfig, resume: bool = False) -> dict:
    """Run the job; returns the last logged scalars (rank 0) and the final checkpoint path."""
    ctx, corpus, ckpt, batches = prepare(cfg, resume)
    torch.manual_seed(cfg.train.seed + ctx.rank)
    model = build_model(cfg, ctx)
    optimizer = make_optimizer(model, cfg.train)
    start = 0
    if ckpt is not None:
        start, _ = load_checkpoint(ckpt, model, optimizer, ctx)
    if ctx.is_main:
        clean_temporaries(cfg.train.out_dir)
    logger = TrainLogger(cfg, ctx.is_main, start)
    t = cfg.train
    tokens_per_step = batches.sampler.B * ctx.world_size * cfg.data.seq_len * t.grad_accum
    logger.message(f"{cfg.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on this rank, "
                   f"{corpus.tokens() / 1e6:.1f}M training tokens ({corpus.description}), {ctx.world_size} rank(s)"
                   f"{' emulating ' + str(ctx.layout.topology) if ctx.emulated else ''}, device {ctx.device}")
    last, final_ckpt = {}, None
    clock = {"t": time.perf_counter(), "step": start, "paused": 0.0}   # training time since the last log
    for step in range(start, t.steps):
        set_lr(optimizer, lr_at(step, t))
        for micro in range(t.grad_accum):
            lm, aux, metrics = loss_of(model, cfg, *batches.get(step, micro))
            ((lm + aux) / t.grad_accum).backward()
        sync_gradients(model, ctx)
        grad_norm = clip_grad_norm(model, ctx, t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        scalars = None
        if done % cfg.logging.log_every == 0 or done == t.steps:
            loss, aux_v = all_reduce_mean([float(lm.detach()), float(aux.detach())], ctx, ctx.device)
            if not math.isfinite(loss):
                raise FloatingPointError(f"step {done}: the training loss is {loss}")
            now = time.perf_counter()
            elapsed, steps_done = now - clock["t"] - clock["paused"], done - clock["step"]
            clock.update(t=now, step=done, paused=0.0)
            scalars = dict(loss=loss + aux_v, lm_loss=loss, aux_objective=aux_v, lr=lr_at(step, t),
                           grad_norm=grad_norm, tokens_per_s=tokens_per_step * steps_done / elapsed,
                           step_time_s=elapsed / steps_done, **moe_scalars(metrics, logger, done, model.moe_layers))
        paused = time.perf_counter()
        if (t.eval_every and done % t.eval_every == 0) or done == t.steps:
            scalars = dict(scalars or {}, val_loss=validate(model, cfg, batches, ctx))
        logger.step(done, scalars)
        if scalars:
            last = dict(last, **scalars, step=done)
        if (t.ckpt_every and done % t.ckpt_every == 0) or done == t.steps:
            final_ckpt = save_checkpoint(model, optimizer, ctx, done, {"last": last})
        clock["paused"] += time.perf_counter() - paused
    logger.close()
    if ctx.is_main and cfg.export.at_end and final_ckpt is not None:
        from locmoe.export import export_checkpoint

        out = export_checkpoint(final_ckpt, cfg.export.dir or f"{t.out_dir}/router")
        logger.message(f"exported the routers to {out}")
    return {"last": last, "checkpoint": str(final_ckpt) if final_ckpt else None}
