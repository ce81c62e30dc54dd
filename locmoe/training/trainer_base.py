"""What the torch and MindSpore trainers share, written once: the order of their set-up and the calls that
pass straight through to their checkpoint module. A backend's trainer hands :class:`BackendTrainer` the
framework's own pieces; the rest of :class:`locmoe.backend_api.Trainer` (``describe``, the step, its outputs on
the host, validation, the mean over ranks) it writes itself."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

from locmoe.backend_api import TrainerFacts
from locmoe.config.schema import JobConfig


class BackendTrainer:
    """``checkpoints``: the backend's checkpoint module (``load_checkpoint``, ``barrier``, ``check_finite``,
    ``write_rank_files``); ``prepare_run(cfg, resume)`` -> (ctx, corpus, checkpoint to resume or None,
    batches), every input checked; ``seed(int)``; ``new_model(cfg, ctx)``; ``new_optimizer(model, cfg, ctx)``;
    ``host(t)``: a device tensor of the MoE statistics as the logger takes it (numpy)."""

    facts: TrainerFacts  # set by build_model, from ``describe``

    def __init__(
        self,
        cfg: JobConfig,
        checkpoints: ModuleType,
        prepare_run: Callable,
        seed: Callable[[int], Any],
        new_model: Callable,
        new_optimizer: Callable,
        host: Callable,
    ):
        self.cfg, self.checkpoints, self.host = cfg, checkpoints, host
        self._prepare_run, self._seed, self._new_model, self._new_optimizer = (
            prepare_run,
            seed,
            new_model,
            new_optimizer,
        )

    def describe(self) -> TrainerFacts:
        """The facts of the built model (parameter count, the device's note, tokens per step ...)."""
        raise NotImplementedError

    def prepare(self, resume: bool) -> Optional[Path]:
        self.ctx, self.corpus, ckpt, self.batches = self._prepare_run(self.cfg, resume)
        return ckpt

    def build_model(self) -> None:
        self._seed(self.cfg.train.seed + self.ctx.rank)
        self.model = self._new_model(self.cfg, self.ctx)
        self.batches.place_by(self.model, self.cfg, self.ctx)
        self.optimizer = self._new_optimizer(self.model, self.cfg, self.ctx)
        self.facts = self.describe()

    def load_checkpoint(self, path: Path) -> int:
        return self.checkpoints.load_checkpoint(path, self.model, self.optimizer, self.ctx)[0]

    def moe_statistics(self, outputs) -> tuple[list[dict], list, list]:
        metrics = outputs[2]
        loads = [self.host(m.stats.expert_load) for m in metrics]
        return [m.summary() for m in metrics], loads, [self.host(m.stats.capacity) for m in metrics]

    def barrier(self) -> None:
        self.checkpoints.barrier(self.ctx)

    def check_weights_finite(self, step: int) -> None:
        self.checkpoints.check_finite(self.model, self.optimizer, self.ctx, step)

    def write_rank_files(self, tmp: Path, step: int) -> None:
        self.checkpoints.write_rank_files(self.model, self.optimizer, self.ctx, tmp, step)
