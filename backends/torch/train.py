"""Pretraining loop of the torch backend: ``locmoe train CONFIG`` (any launcher: none, torchrun).

Order of work: check every input (config, data, checkpoint to resume) before writing anything, build the
model, then step: micro-batches → gradient sync → clip → AdamW; log, validate, checkpoint; export the
routers at the end.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch.checkpoint import load_checkpoint, save_checkpoint
from backends.torch.distributed import DistContext, expert_parallel, init_distributed
from backends.torch.optim import all_reduce_mean, clip_grad_norm, make_optimizer, set_lr, sync_gradients
from locmoe import train_common as common
from locmoe.checkpointing import clean_temporaries
from locmoe.config.schema import JobConfig
from locmoe.data import BatchSampler
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
    corpus, ckpt = common.check_inputs(cfg, resume)
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
    return common.moe_scalars([m.summary() for m in metrics], [m.stats.expert_load.cpu().numpy() for m in metrics],
                              logger, step, layers)


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
    run = common.RunRecord(cfg, ctx.is_main, start)
    t = cfg.train
    tokens_per_step = batches.sampler.B * ctx.world_size * cfg.data.seq_len * t.grad_accum
    run.logger.message(common.start_message(cfg, sum(p.numel() for p in model.parameters()), corpus, ctx,
                                            f"device {ctx.device}"))
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

        def scalars() -> dict:
            loss, aux_v = all_reduce_mean([float(lm.detach()), float(aux.detach())], ctx, ctx.device)
            return dict(common.step_scalars(loss, aux_v, lr_at(step, t), grad_norm, tokens_per_step, run.clock, done),
                        **moe_scalars(metrics, run.logger, done, model.moe_layers))

        run.end_step(done, scalars, lambda: validate(model, cfg, batches, ctx),
                     lambda extra: save_checkpoint(model, optimizer, ctx, done, extra))
    return run.finish()
