"""The torch backend's side of ``locmoe train CONFIG`` (any launcher: none, torchrun): ``TorchTrainer``, the
:class:`locmoe.backend_api.Trainer` that the one loop (``locmoe.training.loop.run``) drives.

What only torch does: build the model (sharded, compiled), the step (micro-batches → gradient sync → clip →
AdamW, replayed as a CUDA graph where the job allows it), read its outputs back, validate, and write this rank's
checkpoint files.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch import checkpoint
from backends.torch.collectives import all_gather_rows
from backends.torch.distributed import DistContext, device_memory, expert_parallel, init_distributed
from backends.torch.moe_layer import MoELayer
from backends.torch.optim import all_reduce_mean, clip_grad_norm, make_optimizer, set_lr, sync_gradients
from backends.torch.sharding import gathered, shard_model, sharded
from locmoe.backend_api import TrainerFacts
from locmoe.config.schema import JobConfig
from locmoe.data import BatchSampler
from locmoe.data.placement import SequencePlacer, placer_for
from locmoe.training import common
from locmoe.training.loop import run
from locmoe.training.schedule import lr_at
from locmoe.training.trainer_base import BackendTrainer
from models.pangu_sigma_torch import PanGuSigma


def build_model(cfg: JobConfig, ctx: DistContext) -> PanGuSigma:
    model = PanGuSigma(cfg, expert_parallel(ctx, cfg.parallel, cfg.moe.num_experts), MoELayer)
    model.reset_parameters(cfg.train.seed)
    model = model.to(ctx.device)
    shard_model(model, cfg, ctx)
    model.set_execution(
        compile_blocks=compile_enabled(cfg.train.compile, ctx.device),
        activation_checkpointing=cfg.train.activation_checkpointing,
    )
    return model


def placement_view(model, cfg: JobConfig, ctx: DistContext):
    """The parameters the placement's node preference reads, gathered where they are sharded."""
    return gathered(model) if sharded(cfg, ctx) else contextlib.nullcontext()


def compile_enabled(setting, device: torch.device) -> bool:
    """``train.compile``: null compiles on CUDA, where launch overhead and unfused element-wise kernels cost
    the most; on CPU the compile time outweighs the gain for the small models run there."""
    return device.type == "cuda" if setting is None else setting


@dataclass
class Batches:
    """This process's view of the data: one rank's rows, or every emulated rank's rows; with a
    ``data.placement`` other than ``drawn``, the rows the placer deals to it (``place_by``)."""

    sampler: BatchSampler
    device: torch.device
    placer: Optional[SequencePlacer] = None

    def get(self, step: int, micro: int = 0, split: str = "train"):
        x, y, d = (self.placer or self.sampler).batch(step, micro, split)
        return tuple(self._to_device(a) for a in (x, y, d))

    def place_by(self, model, cfg: JobConfig, ctx: DistContext) -> None:
        """Deal each step's sequences to the nodes by ``model``'s node preference (``locmoe.data.placement``)."""

        def preference(x: np.ndarray, d: np.ndarray) -> np.ndarray:
            with autocast(cfg, self.device), placement_view(model, cfg, ctx):
                pref = model.node_preference(self._to_device(x), self._to_device(d), cfg.data.placement == "affinity")
                return pref.cpu().numpy()

        gather = lambda a: all_gather_rows(torch.from_numpy(a).to(self.device), ctx.ep).cpu().numpy()  # noqa: E731
        self.placer = placer_for(cfg, ctx, self.sampler, preference, gather)

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        if self.device.type == "cpu":
            return t
        # NOTE: a copy from pageable memory waits for the device queue (a host sync); from pinned memory it is
        # queued behind the running step like a kernel
        return t.pin_memory().to(self.device, non_blocking=True)


def prepare(cfg: JobConfig, resume: bool):
    """Everything that can fail on bad input, before any output is written."""
    ctx = init_distributed(cfg.parallel)
    corpus, ckpt = common.check_inputs(cfg, resume, ctx.layout, device_memory(ctx.device))
    sampler = common.batch_sampler(cfg, corpus, ctx)
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


def train_step(model, optimizer, cfg: JobConfig, ctx: DistContext, batches: Batches, step: int):
    """One optimiser step: set the learning rate, then ``step_body`` on the step's micro-batches."""
    set_lr(optimizer, lr_at(step, cfg.train))
    return step_body(model, optimizer, cfg, ctx, [batches.get(step, m) for m in range(cfg.train.grad_accum)])


def step_body(model, optimizer, cfg: JobConfig, ctx: DistContext, micro_batches: list):
    """Micro-batches → gradient sync → clip → AdamW. Returns the last micro-batch's (lm loss, auxiliary
    objective, MoE metrics) and the gradient norm, all still on the device.

    NOTE: no host sync on one device (expert parallelism adds one per MoE layer: the all-to-all sizes);
    reading any of the returned tensors is one, which the loop does on logging steps only."""
    for x, y, d in micro_batches:
        lm, aux, metrics = loss_of(model, cfg, x, y, d)
        ((lm + aux) / len(micro_batches)).backward()
    sync_gradients(model, ctx, sharded(cfg, ctx))
    grad_norm = clip_grad_norm(model, ctx, cfg.train.grad_clip, optimizer, sharded(cfg, ctx))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # detached: the loop keeps these until the next step returns, and a loss with its autograd graph would keep
    # this step's AccumulateGrad nodes alive into the next one, which a CUDA graph capture refuses
    return lm.detach(), aux.detach(), metrics, grad_norm


def make_stepper(model, optimizer, cfg: JobConfig, ctx: DistContext, batches: Batches, log=print):
    """``step(i)`` for the loop: the whole step as a replayed CUDA graph where the job allows it
    (``train.cuda_graph``), else ``train_step``."""
    from backends.torch.step_graph import GraphedStep, graph_blockers

    eager = lambda i: train_step(model, optimizer, cfg, ctx, batches, i)  # noqa: E731
    if cfg.train.cuda_graph is False:
        return eager
    blockers = graph_blockers(cfg, ctx, model)
    if blockers:
        if cfg.train.cuda_graph:
            log(f"train.cuda_graph: the step stays eager: {'; '.join(blockers)}")
        return eager
    return GraphedStep(
        eager, lambda micro_batches: step_body(model, optimizer, cfg, ctx, micro_batches), optimizer, batches, cfg, log
    )


def train(cfg: JobConfig, resume: bool = False) -> dict:
    """Run the job; returns the last logged scalars (rank 0) and the final checkpoint path."""
    trainer = TorchTrainer(cfg)
    # pyright matches no cached_property (``facts``) to a protocol's attribute, though it may be read and set
    return run(trainer, cfg, resume)


class TorchTrainer(BackendTrainer):
    """The torch backend's :class:`locmoe.backend_api.Trainer`: one rank's model, optimiser, data and step."""

    def __init__(self, cfg: JobConfig):
        optimizer = lambda model, cfg, ctx: make_optimizer(model, cfg.train)  # noqa: E731
        host = lambda t: t.cpu().numpy()  # noqa: E731
        super().__init__(cfg, checkpoint, prepare, torch.manual_seed, build_model, optimizer, host)

    def describe(self) -> TrainerFacts:
        ctx, model = self.ctx, self.model
        parameters = sum(p.numel() for p in model.parameters())
        tokens = common.tokens_per_step(self.cfg, self.batches.sampler, ctx)
        return TrainerFacts(
            ctx, "torch", self.corpus, parameters, f"device {ctx.device}", tokens, model.moe_layers, peak(ctx)
        )

    def make_step(self, log) -> None:
        self.stepper = make_stepper(self.model, self.optimizer, self.cfg, self.ctx, self.batches, log)

    def step(self, step: int):
        return self.stepper(step)

    def to_host(self, outputs) -> tuple[float, float, float]:
        lm, aux, _, grad_norm = outputs
        self.model.check_finite_inputs()
        loss, aux_v = self.mean_over_ranks([float(lm.detach()), float(aux.detach())])
        return loss, aux_v, float(grad_norm)

    def validate(self) -> float:
        return validate(self.model, self.cfg, self.batches, self.ctx)

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        return all_reduce_mean(values, self.ctx, self.ctx.device)


def peak(ctx: DistContext) -> Optional[float]:
    """One GPU's peak flops (for MFU); None off CUDA."""
    from locmoe.training.mfu import peak_flops

    return peak_flops(torch.cuda.get_device_name(ctx.device)) if ctx.device.type == "cuda" else None
