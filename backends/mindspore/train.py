"""Pretraining loop of the MindSpore backend: ``locmoe train CONFIG`` with ``parallel.backend: mindspore``
(one process, or msrun: ``scripts/train_msrun.sh``). The twin of ``backends.torch.train``.

Order of work: check every input (config, data, checkpoint to resume) before writing anything, build the
model, then step: micro-batches (``mindspore.value_and_grad``) → gradient sync → clip → AdamW (its moments
sharded over the ranks with ``parallel.shard``: ``sharded_adamw``), op by op (``EagerStep``) or compiled
(``parallel.jit_step``: ``train_step.CompiledStep``); log, validate, checkpoint; export the routers at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor

from backends.mindspore.checkpoint import load_checkpoint, save_checkpoint
from backends.mindspore.collectives import all_gather_rows
from backends.mindspore.distributed import DistContext, expert_parallel, init_distributed
from backends.mindspore.optim import all_reduce_mean, set_lr
from backends.mindspore.sharded_adamw import optimizer_for, sharding_note
from backends.mindspore.train_step import CompiledStep, EagerStep, loss_of
from locmoe import train_common as common
from locmoe.checkpointing import clean_temporaries
from locmoe.config import ConfigError
from locmoe.config.schema import JobConfig
from locmoe.data import BatchSampler
from locmoe.data.placement import SequencePlacer, placer_for
from locmoe.planning.memory_plan import host_memory
from locmoe.schedule import lr_at
from locmoe.train_log import TrainLogger
from models.pangu_sigma_mindspore import PanGuSigma


def build_model(cfg: JobConfig, ctx: DistContext) -> PanGuSigma:
    model = PanGuSigma(cfg, expert_parallel(ctx, cfg.parallel, cfg.moe.num_experts))
    model.reset_parameters(cfg.train.seed)
    model.set_train(True)  # MindSpore cells start in eval mode; the router's angle EMA learns in training
    return model


@dataclass
class Batches:
    """This process's view of the data: one rank's rows, or every emulated rank's rows; with a
    ``data.placement`` other than ``drawn``, the rows the placer deals to it (``place_by``)."""

    sampler: BatchSampler
    placer: Optional[SequencePlacer] = None

    def get(self, step: int, micro: int = 0, split: str = "train"):
        return tuple(Tensor(a) for a in (self.placer or self.sampler).batch(step, micro, split))

    def place_by(self, model, cfg: JobConfig, ctx: DistContext) -> None:
        """Deal each step's sequences to the nodes by ``model``'s node preference (``locmoe.data.placement``)."""
        through = cfg.data.placement == "affinity"
        preference = lambda x, d: model.node_preference(Tensor(x), Tensor(d), through).asnumpy()  # noqa: E731
        gather = lambda a: all_gather_rows(Tensor(a), ctx.ep).asnumpy()  # noqa: E731
        self.placer = placer_for(cfg, ctx, self.sampler, preference, gather)


def prepare(cfg: JobConfig, resume: bool):
    """Everything that can fail on bad input, before any output is written."""
    ctx = init_distributed(cfg.parallel)
    if cfg.train.dtype == "bfloat16" and ctx.device == "CPU":
        raise ConfigError(
            "train.dtype",
            "'bfloat16' needs bfloat16 matmuls, which MindSpore's CPU kernels lack (MindSpore 2.10); "
            "allowed on CPU: float32 (bfloat16 is for Ascend)",
        )
    # NOTE: MindSpore has no query of an Ascend device's free memory: the plan is checked on CPU only
    memory = host_memory() if ctx.device == "CPU" else None
    corpus, ckpt = common.check_inputs(cfg, resume, ctx.layout, memory)
    ranks = ctx.layout.topology.world_size if ctx.emulated else 1
    sampler = BatchSampler(
        corpus, cfg.data.seq_len, cfg.train.batch_size * ranks, rank=ctx.rank, world=ctx.world_size, seed=cfg.data.seed
    )
    return ctx, corpus, ckpt, Batches(sampler)


def validate(model, batches: Batches, ctx, eval_batches: int) -> float:
    model.set_train(False)
    losses = [float(loss_of(model, *batches.get(i, split="val"))[0].asnumpy()) for i in range(eval_batches)]
    model.set_train(True)
    return all_reduce_mean([float(np.mean(losses))], ctx)[0]


def moe_scalars(metrics: list, logger: TrainLogger, step: int, layers: list) -> dict:
    return common.moe_scalars(
        [m.summary() for m in metrics],
        [m.stats.expert_load for m in metrics],
        logger,
        step,
        layers,
        [m.stats.capacity for m in metrics],
    )


def train(cfg: JobConfig, resume: bool = False) -> dict:
    """Run the job; returns the last logged scalars (rank 0) and the final checkpoint path."""
    ctx, corpus, ckpt, batches = prepare(cfg, resume)
    ms.set_seed(cfg.train.seed + ctx.rank)
    model = build_model(cfg, ctx)
    batches.place_by(model, cfg, ctx)
    optimizer = optimizer_for(model, cfg.train, cfg.parallel, ctx)
    start = 0
    if ckpt is not None:
        start, _ = load_checkpoint(ckpt, model, optimizer, ctx)
    if ctx.is_main:
        clean_temporaries(cfg.train.out_dir)
    # across processes, the ranks agree by a collective to stop on a signal (locmoe.interrupts); no MFU: the
    # peak of an Ascend device is not in locmoe.mfu's table
    mean = (lambda values: all_reduce_mean(values, ctx)) if ctx.world_size > 1 else None
    run = common.RunRecord(cfg, ctx.is_main, start, devices=ctx.world_size, mean_over_ranks=mean)
    t = cfg.train
    tokens_per_step = batches.sampler.batch_per_rank * ctx.world_size * cfg.data.seq_len * t.grad_accum
    mode = "compiled step" if cfg.parallel.jit_step else "PyNative + jit" if cfg.parallel.jit else "PyNative"
    mode = ", ".join(filter(None, (mode, sharding_note(optimizer, cfg.parallel))))
    run.logger.message(
        common.start_message(
            cfg, sum(p.size for p in model.trainable_params()), corpus, ctx, f"MindSpore {ctx.device} {mode}"
        )
    )
    one_step = (CompiledStep if cfg.parallel.jit_step else EagerStep)(model, optimizer, ctx, cfg)
    with run:  # a stop on a signal leaves the logs flushed and the run directory free
        for step in range(start, t.steps):
            set_lr(optimizer, lr_at(step, t))
            lm, aux, metrics, grad_norm = one_step(batches, step)
            done = step + 1

            def scalars() -> dict:
                loss, aux_v = all_reduce_mean([float(lm.asnumpy()), float(aux.asnumpy())], ctx)
                norm = float(grad_norm.asnumpy()) if isinstance(grad_norm, Tensor) else grad_norm
                return dict(
                    common.step_scalars(loss, aux_v, lr_at(step, t), norm, tokens_per_step, run.clock, done),
                    **moe_scalars(metrics, run.logger, done, model.moe_layers),
                )

            run.end_step(
                done,
                scalars,
                lambda: validate(model, batches, ctx, t.eval_batches),
                lambda extra: save_checkpoint(model, optimizer, ctx, done, extra),
            )
    return run.finish()
