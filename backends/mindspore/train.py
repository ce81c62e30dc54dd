"""The MindSpore backend's side of ``locmoe train CONFIG`` with ``parallel.backend: mindspore`` (one process,
or msrun: ``scripts/train_msrun.sh``): ``MindSporeTrainer``, the :class:`locmoe.backend_api.Trainer` that the one
loop (``locmoe.training.loop.run``) drives.

What only MindSpore does: build the model, the step (micro-batches with ``mindspore.value_and_grad`` → gradient
sync → clip → AdamW, its moments sharded over the ranks with ``parallel.shard``: ``sharded_adamw``), op by op
(``EagerStep``) or compiled (``parallel.jit_step``: ``train_step.CompiledStep``), read its outputs back,
validate, and write this rank's checkpoint files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor

from backends.mindspore import checkpoint
from backends.mindspore.collectives import all_gather_rows
from backends.mindspore.distributed import DistContext, expert_parallel, init_distributed
from backends.mindspore.moe_layer import MoELayer
from backends.mindspore.optim import all_reduce_mean, set_lr
from backends.mindspore.sharded_adamw import optimizer_for, sharding_note
from backends.mindspore.train_step import CompiledStep, EagerStep, loss_of
from locmoe.backend_api import TrainerFacts
from locmoe.config import ConfigError
from locmoe.config.schema import JobConfig
from locmoe.data import BatchSampler
from locmoe.data.placement import SequencePlacer, placer_for
from locmoe.planning.memory_plan import host_memory
from locmoe.training import common
from locmoe.training.loop import run
from locmoe.training.schedule import lr_at
from locmoe.training.trainer_base import BackendTrainer
from models.pangu_sigma_mindspore import PanGuSigma


def build_model(cfg: JobConfig, ctx: DistContext) -> PanGuSigma:
    model = PanGuSigma(cfg, expert_parallel(ctx, cfg.parallel, cfg.moe.num_experts), MoELayer)
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
    sampler = common.batch_sampler(cfg, corpus, ctx)
    return ctx, corpus, ckpt, Batches(sampler)


def validate(model, cfg: JobConfig, batches: Batches, ctx) -> float:
    model.set_train(False)
    losses = [float(loss_of(model, *batches.get(i, split="val"))[0].asnumpy()) for i in range(cfg.train.eval_batches)]
    model.set_train(True)
    return all_reduce_mean([float(np.mean(losses))], ctx)[0]


def train(cfg: JobConfig, resume: bool = False) -> dict:
    """Run the job; returns the last logged scalars (rank 0) and the final checkpoint path."""
    trainer = MindSporeTrainer(cfg)
    # pyright matches no cached_property (``facts``) to a protocol's attribute, though it may be read and set
    return run(trainer, cfg, resume)


class MindSporeTrainer(BackendTrainer):
    """The MindSpore backend's :class:`locmoe.backend_api.Trainer`: one rank's model, optimiser, data and step.
    No MFU: the peak of an Ascend device is not in ``locmoe.training.mfu``'s table."""

    def __init__(self, cfg: JobConfig):
        # the MoE statistics reach the logger as they are (it reads each as an array)
        optimizer = lambda model, cfg, ctx: optimizer_for(model, cfg.train, cfg.parallel, ctx)  # noqa: E731
        super().__init__(cfg, checkpoint, prepare, ms.set_seed, build_model, optimizer, lambda t: t)

    def describe(self) -> TrainerFacts:
        cfg, ctx = self.cfg, self.ctx
        parameters = sum(p.size for p in self.model.trainable_params())
        mode = "compiled step" if cfg.parallel.jit_step else "PyNative + jit" if cfg.parallel.jit else "PyNative"
        mode = ", ".join(filter(None, (mode, sharding_note(self.optimizer, cfg.parallel))))
        tokens = common.tokens_per_step(cfg, self.batches.sampler, ctx)
        return TrainerFacts(
            ctx, "mindspore", self.corpus, parameters, f"MindSpore {ctx.device} {mode}", tokens, self.model.moe_layers
        )

    def make_step(self, log) -> None:
        self.one_step = (CompiledStep if self.cfg.parallel.jit_step else EagerStep)(
            self.model, self.optimizer, self.ctx, self.cfg
        )

    def step(self, step: int):
        set_lr(self.optimizer, lr_at(step, self.cfg.train))
        return self.one_step(self.batches, step)

    def to_host(self, outputs) -> tuple[float, float, float]:
        lm, aux, _, grad_norm = outputs
        loss, aux_v = self.mean_over_ranks([float(lm.asnumpy()), float(aux.asnumpy())])
        return loss, aux_v, float(grad_norm.asnumpy()) if isinstance(grad_norm, Tensor) else grad_norm

    def validate(self) -> float:
        return validate(self.model, self.cfg, self.batches, self.ctx)

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        return all_reduce_mean(values, self.ctx)
