"""The one training loop of ``locmoe train``, framework-free: ``run`` drives a backend's
:class:`~locmoe.backend_api.Trainer` (``backends.torch.train.TorchTrainer``,
``backends.mindspore.train.MindSporeTrainer``) and never imports a backend.

Order of work: the trainer checks every input (config, data, checkpoint to resume) before anything is written
and builds the model; then each step runs on the device, and ``RunRecord.end_step`` logs it (the one host
read), validates and checkpoints, in the same order for every backend, and stops the run when a signal asks
(``locmoe.training.interrupts``); at the end the routers are exported.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Optional

from locmoe import run_lock
from locmoe.backend_api import Trainer, TrainerFacts
from locmoe.checkpoint.directory import write_checkpoint
from locmoe.config.schema import JobConfig
from locmoe.training import interrupts
from locmoe.training.common import StepClock, due, moe_scalars, step_scalars
from locmoe.training.log_lines import final_line
from locmoe.training.mfu import mfu
from locmoe.training.schedule import lr_at
from locmoe.training.train_log import TrainLogger


def run(trainer: Trainer, cfg: JobConfig, resume: bool = False) -> dict:
    """Run the job on ``trainer``; returns the last logged scalars (rank 0) and the final checkpoint path."""
    ckpt = trainer.prepare(resume)
    trainer.build_model()
    start = 0 if ckpt is None else trainer.load_checkpoint(ckpt)
    record = RunRecord(cfg, trainer, start)
    record.logger.message(start_message(cfg, trainer.facts))
    trainer.make_step(record.logger.message)
    with record:  # a stop on a signal (locmoe.training.interrupts) leaves the logs flushed and the run directory free
        for step in range(start, cfg.train.steps):
            outputs = trainer.step(step)
            record.end_step(step + 1, outputs)
    return record.finish()


def start_message(cfg: JobConfig, facts: TrainerFacts) -> str:
    """The first line of a run: model size, data, ranks (and the emulated topology), device."""
    ctx, corpus = facts.ctx, facts.corpus
    emulating = f" emulating {ctx.layout.topology}" if ctx.emulated else ""
    return (
        f"{cfg.name}: {facts.parameters / 1e6:.2f}M parameters on this rank, {corpus.tokens() / 1e6:.1f}M training "
        f"tokens ({corpus.description}), {ctx.world_size} rank(s){emulating}, {facts.device}"
    )


class RunRecord:
    """The logger, the tokens/s clock, the last logged scalars and the newest checkpoint of a run on
    ``trainer``. ``end_step`` reads a step back from the trainer, logs it, validates and checkpoints, then stops
    the run if a signal asked it to. The loop runs inside ``with record:``, which flushes the logs and frees
    the run directory when a second signal abandons a step.

    Several processes agree to stop on a signal through ``trainer.mean_over_ranks``; the trainer's
    ``facts.peak_flops`` (one device's peak) gives the MFU of logged steps."""

    def __init__(self, cfg: JobConfig, trainer: Trainer, start: int):
        self.cfg, self.trainer = cfg, trainer
        self.is_main = trainer.facts.ctx.is_main
        try:
            self.logger = TrainLogger(cfg, self.is_main, start)
        except BaseException:  # W&B refusing to start, say: free the run directory for the next try
            run_lock.release(cfg.train.out_dir)
            raise
        self.clock = StepClock(start)
        self.last: dict = {}
        self.final_ckpt: Optional[Path] = None
        self.done = start
        if start >= cfg.train.steps:
            self.logger.message(
                f"nothing to train: the checkpoint is at step {start} and train.steps = "
                f"{cfg.train.steps} (raise train.steps to continue)"
            )

    def end_step(self, done: int, outputs: Any) -> None:
        """After step ``done`` (1-based) returned ``outputs``: its logging, validation and checkpoint."""
        t = self.cfg.train
        values = self.scalars(done, outputs) if due(done, self.cfg.logging.log_every, t.steps) else None
        self.clock.pause()
        if due(done, t.eval_every, t.steps):
            values = dict(values or {}, val_loss=self.trainer.validate())
        self.logger.step(done, values)
        if values:
            self.last = dict(self.last, **values, step=done)
        if due(done, t.ckpt_every, t.steps):
            self.save(done)
        self.done = done
        self.clock.resume()
        self._stop_if_asked(done)

    def scalars(self, done: int, outputs: Any) -> dict:
        """A logged step's scalars (one host sync); a non-finite loss stops the run (NonFiniteError)."""
        facts = self.trainer.facts
        loss, aux, grad_norm = self.trainer.to_host(outputs)
        lr = lr_at(done - 1, self.cfg.train)
        values = step_scalars(loss, aux, lr, grad_norm, facts.tokens_per_step, self.clock, done)
        summaries, loads, capacities = self.trainer.moe_statistics(outputs)
        values.update(moe_scalars(summaries, loads, self.logger, done, facts.moe_layers, capacities))
        if facts.peak_flops:
            values["mfu"] = mfu(values["tokens_per_s"], self.cfg, facts.peak_flops, facts.ctx.world_size)
        return values

    def save(self, done: int) -> None:
        """Checkpoint step ``done`` with the last logged scalars (every rank)."""
        self.final_ckpt = write_checkpoint(self.trainer, self.cfg, done, {"last": self.last})

    def _stop_if_asked(self, done: int) -> None:
        """After a complete step: raise Interrupted when a signal asked to stop (SIGTERM with
        ``train.save_on_signal`` checkpoints this step first). The last step ignores it: the run is done."""
        t = self.cfg.train
        signum = interrupts.requested()
        if done == t.steps:
            return
        if self.trainer.facts.ctx.world_size > 1:
            # NOTE: every rank must stop after the same step and save the same checkpoint, or the others wait
            # forever in a collective; the ranks agree on logging steps, where the loop syncs the host anyway
            if not due(done, self.cfg.logging.log_every, t.steps):
                return
            asked, term = self.trainer.mean_over_ranks([float(signum is not None), float(signum == signal.SIGTERM)])
            signum = None if asked == 0 else signal.SIGTERM if term > 0 else signal.SIGINT
        if signum is None:
            return
        if signum == signal.SIGTERM and t.save_on_signal and not due(done, t.ckpt_every, t.steps):
            self.save(done)
        raise interrupts.Interrupted(signum, done)  # __exit__ closes the logs

    def __enter__(self) -> "RunRecord":
        signum = interrupts.requested()
        # a signal while the run was set up: stop before its first step (several processes: at the first
        # logging step, where they agree)
        if signum is not None and self.trainer.facts.ctx.world_size == 1:
            self._release()
            raise interrupts.Interrupted(signum, self.done)
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if isinstance(err, interrupts.Interrupted):  # asked after a step, or a second signal abandoned one
            if err.step is None:
                err.step = self.done
            self._release()
        return False

    def _release(self) -> None:
        """Flush and close the logs, free the run directory (for a stop; ``finish`` does this at the end)."""
        self.logger.close()
        if self.is_main:
            run_lock.release(self.cfg.train.out_dir)

    def finish(self) -> dict:
        self.logger.close()
        export_at_end(self.cfg, self.is_main, self.final_ckpt, self.logger)
        run_lock.release(self.cfg.train.out_dir)
        if self.last:
            self.logger.message(final_line(self.cfg.name, self.last, self.final_ckpt))
        return {"last": self.last, "checkpoint": str(self.final_ckpt) if self.final_ckpt else None}


def export_at_end(cfg: JobConfig, is_main: bool, final_ckpt: Optional[Path], logger: TrainLogger) -> None:
    """Export the routers of the final checkpoint (rank 0) when ``export.at_end``."""
    if is_main and cfg.export.at_end and final_ckpt is not None:
        from locmoe.export import export_checkpoint

        out = export_checkpoint(final_ckpt, cfg.export.dir or f"{cfg.train.out_dir}/router")
        logger.message(f"exported the routers to {out}")
