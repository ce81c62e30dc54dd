"""The framework-free parts of a training run that both backends' loops share: checking every input before
anything is written, the per-step MoE scalars, and the tokens/s clock that leaves out evaluation and
checkpoint time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from locmoe import run_lock
from locmoe.checkpoint.directory import (
    CheckpointError,
    check_layout,
    checkpoint_root,
    clean_temporaries,
    latest,
    layout_record,
    list_checkpoints,
    load_state,
)
from locmoe.config import ConfigError
from locmoe.config.schema import JobConfig
from locmoe.data import BatchSampler, Corpus, load_corpus, load_tokenizer
from locmoe.parallel.topology import ExpertPlacement, LaunchEnv, ParallelLayout
from locmoe.planning.memory_plan import check_fits
from locmoe.training.finite import NonFiniteError
from locmoe.training.resume_check import resume_changes
from locmoe.training.train_log import TrainLogger
from locmoe.training.wandb_log import require_wandb

MOE_MEAN_KEYS = ("dropped_fraction", "cross_node_fraction", "in_node_fraction", "locality_loss", "aux_loss")


def check_inputs(
    cfg: JobConfig, resume: bool, layout: ParallelLayout, memory: Optional[tuple[int, str]]
) -> tuple[Corpus, Optional[Path]]:
    """Expert placement, memory, tokenizer, corpus, export directory and the checkpoint to resume from; a clear
    error on any bad input. Only then does rank 0 take the run directory's lock (``locmoe.run_lock``, which
    creates ``train.out_dir``) and hold it for the run's life: a refused run leaves nothing behind; an accepted
    one then removes the temporary checkpoint directories a crash left.

    ``memory``: (bytes available, where) of the device the model lives on, or None where it cannot be known
    (the memory plan is then not checked)."""
    if memory is not None:  # first: the placement below lists the experts, and moe.num_experts may be 2**63 - 1
        check_fits(cfg, *memory, ep_size=layout.topology.world_size, emulated=layout.emulated)
    ExpertPlacement.from_config(cfg.parallel, cfg.moe.num_experts, layout.topology)  # ConfigError if it cannot be
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            "model.vocab_size",
            f"{cfg.model.vocab_size} is smaller than the tokenizer's vocabulary ({tokenizer.vocab_size})",
        )
    corpus = load_corpus(cfg.data, tokenizer, cfg.moe.domains.num_domains)
    check_export_dir(cfg)
    check_out_dir(cfg)
    require_wandb(cfg)
    main = LaunchEnv.from_environ().rank == 0
    if main:
        run_lock.acquire(cfg.train.out_dir, message=lambda text: print(f"warning: {text}"))
    try:
        ckpt = checkpoint_to_resume(cfg, main, layout) if resume else _no_checkpoints(cfg)
    except BaseException:
        run_lock.release(cfg.train.out_dir, remove_dir=True)
        raise
    if main:  # the run is accepted: what a crash left half-written or half-pruned goes
        clean_temporaries(cfg.train.out_dir)
    return corpus, ckpt


RUN_ENTRIES = (run_lock.LOCK_FILE, "checkpoints", "metrics.jsonl")  # what every run writes first


def check_out_dir(cfg: JobConfig) -> None:
    """``train.out_dir`` is new, empty or a run's own directory: a run never writes beside files it did not
    write (the same rule as export's, ``atomic_io.check_replaceable``)."""
    from locmoe.atomic_io import WriteError, check_replaceable

    out = Path(cfg.train.out_dir)
    if not out.exists():
        return
    try:
        check_replaceable(out, lambda d: any((d / name).exists() for name in RUN_ENTRIES), "training run")
    except WriteError as err:
        raise ConfigError("train.out_dir", str(err)) from None


def _no_checkpoints(cfg: JobConfig) -> None:
    if list_checkpoints(cfg.train.out_dir):
        raise CheckpointError(
            f"{cfg.train.out_dir} already holds checkpoints: pass --resume to continue, or choose another train.out_dir"
        )


def checkpoint_to_resume(cfg: JobConfig, main: bool, layout: Optional[ParallelLayout] = None) -> Path:
    """The newest checkpoint that verifies (newer ones that do not are named in a warning), checked against
    this run's config: a shape change is an error, every other change is reported (rank 0)."""
    rejected: list = []
    ckpt = latest(cfg.train.out_dir, rejected)
    if ckpt is None:
        why = f" ({'; '.join(rejected)})" if rejected else ""
        raise CheckpointError(f"--resume: no valid checkpoint in {cfg.train.out_dir}/checkpoints{why}")
    state = load_state(ckpt)
    rows, lines = None, []
    if layout is not None:
        now = layout_record(layout)
        rows = (
            _global_rows(state["config"]["train"]["batch_size"], state["layout"]),
            _global_rows(cfg.train.batch_size, now),
        )
        check_layout(ckpt, state, layout)  # before the run directory is written to
        if state["layout"] != now:
            lines.append(
                f"resume: {ckpt} was written by {state['layout']['world_size']} rank(s), this run has "
                f"{now['world_size']}: each rank reads its new shards; the RNG states start from train.seed"
            )
    lines += resume_changes(state["config"], cfg, state["step"], str(ckpt), rows)
    if main:
        for reason in rejected:
            print(f"warning: skipping a newer checkpoint that does not verify: {reason}; resuming from {ckpt}")
        for line in lines:
            print(line)
    return ckpt


def _global_rows(batch_size: int, layout: dict) -> int:
    """Sequences per micro-batch of the whole job (``checkpointing.layout_record``'s form of a layout)."""
    return batch_size * (layout["ep_size"] if layout["emulated"] else layout["world_size"])


def check_export_dir(cfg: JobConfig) -> None:
    """``export.dir`` may not be (or hold) the run directory, nor lie among its checkpoints, nor be a
    directory of other files: the export at the end replaces its directory."""
    if not cfg.export.at_end:
        return
    from locmoe.export.router_export import is_export

    run = Path(cfg.train.out_dir).absolute().resolve()
    target = Path(cfg.export.dir or f"{cfg.train.out_dir}/router").absolute().resolve()
    if target == run or target in run.parents or checkpoint_root(run) in (target, *target.parents):
        raise ConfigError(
            "export.dir",
            f"{cfg.export.dir!r} is the run directory {cfg.train.out_dir}, holds it or "
            "lies among its checkpoints: the export would replace them; choose another directory "
            "(default: out_dir/router)",
        )
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not is_export(target))):
        raise ConfigError(
            "export.dir",
            f"{target} exists and is not an empty directory or a previous router "
            "export; the export would replace it: choose another directory",
        )


def moe_scalars(
    summaries: list[dict],
    loads: list[np.ndarray],
    logger: TrainLogger,
    step: int,
    layers: list,
    capacities: Optional[list] = None,
) -> dict:
    """Per-step MoE numbers averaged over layers, from each layer's ``MoEMetrics.summary()``, expert load [E]
    and capacity [E] (default: the summary's largest capacity)."""
    if not summaries:
        return {}
    capacities = capacities or [r["capacity_max"] for r in summaries]
    for layer, load, capacity in zip(layers, loads, capacities):
        logger.expert_load(step, layer, load, capacity)
    out = {k: float(np.mean([r[k] for r in summaries])) for k in MOE_MEAN_KEYS}
    bound = [r["capacity_bound"] for r in summaries if r["capacity_bound"] is not None]
    out.update(
        capacity=float(np.mean([r["capacity_max"] for r in summaries])),
        max_expert_load=float(np.mean([r["max_expert_load"] for r in summaries])),
        cross_node_bytes=float(sum(r["cross_node_bytes"] for r in summaries)),
    )
    if bound:
        out["capacity_bound"] = float(np.mean(bound))
    return out


class StepClock:
    """Training time per step since the last log, leaving out validation and checkpoint pauses."""

    def __init__(self, start_step: int):
        self.lap_start, self.step, self.paused = time.perf_counter(), start_step, 0.0
        self._pause_start = 0.0

    def lap(self, done: int) -> tuple[float, int]:
        """(training seconds, steps) since the previous lap; starts the next lap."""
        now = time.perf_counter()
        elapsed, steps = now - self.lap_start - self.paused, done - self.step
        self.lap_start, self.step, self.paused = now, done, 0.0
        return elapsed, steps

    def pause(self) -> None:
        self._pause_start = time.perf_counter()

    def resume(self) -> None:
        self.paused += time.perf_counter() - self._pause_start


def step_scalars(
    loss: float, aux: float, lr: float, grad_norm: float, tokens_per_step: int, clock: StepClock, done: int
) -> dict:
    """The scalars of a logged step; a non-finite loss stops the run (NonFiniteError, no checkpoint of it)."""
    if not np.isfinite(loss) or not np.isfinite(aux):
        raise NonFiniteError(
            f"step {done}: the training loss is {loss} (aux objective {aux}); the run diverged "
            "and stops (a diverged step is never checkpointed): resume from the newest "
            "checkpoint (--resume) with a lower train.lr or a smaller train.grad_clip"
        )
    elapsed, steps = clock.lap(done)
    return dict(
        loss=loss + aux,
        lm_loss=loss,
        aux_objective=aux,
        lr=lr,
        grad_norm=grad_norm,
        tokens_per_s=tokens_per_step * steps / elapsed,
        step_time_s=elapsed / steps,
    )


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) runs after ``step``: every N steps and at the end."""
    return bool(every and step % every == 0) or step == last


def batch_sampler(cfg: JobConfig, corpus: Corpus, ctx) -> BatchSampler:
    """This process's rows of each step: one rank's, or every emulated rank's (``ctx``: a ``DistContext``)."""
    ranks = ctx.layout.topology.world_size if ctx.emulated else 1
    return BatchSampler(
        corpus, cfg.data.seq_len, cfg.train.batch_size * ranks, rank=ctx.rank, world=ctx.world_size, seed=cfg.data.seed
    )


def tokens_per_step(cfg: JobConfig, sampler: BatchSampler, ctx) -> int:
    """Tokens of one optimiser step over every rank (emulated ranks included)."""
    return sampler.batch_per_rank * ctx.world_size * cfg.data.seq_len * cfg.train.grad_accum
