"""Weights & Biases for a training run (``logging.wandb``), an optional extra: ``pip install 'locmoe[wandb]'``.

The logger hands over the same scalars under the same tags as tensorboard (``train/loss``, ``val/val_loss``,
``perf/tokens_per_s``...), one ``log`` call per logged step. Each ``locmoe train`` is its own W&B run (named
after the job, its resolved config attached): W&B's steps only grow within a run, so a resume that rewrites
steps after its checkpoint could not log them into the run that logged them first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal, cast

from locmoe.config.schema import JobConfig
from locmoe.errors import LocMoEError

INSTALL = "pip install 'locmoe[wandb]'"


class WandbMissing(LocMoEError):
    """``logging.wandb.project`` is set but wandb is not installed."""


class WandbFailed(LocMoEError):
    """wandb is installed but would not start the run."""


def enabled(cfg: JobConfig) -> bool:
    w = cfg.logging.wandb
    return bool(w.project) and w.mode != "disabled"


def require_wandb(cfg: JobConfig) -> None:
    """Fail at start-up (exit 2, one line naming the extra) when the job asks for W&B and it is missing."""
    if enabled(cfg) and not _installed():
        raise WandbMissing(
            f"logging.wandb.project = {cfg.logging.wandb.project!r} needs wandb, which is not installed: "
            f"install it with `{INSTALL}` (or set logging.wandb.project to '' to turn W&B off)"
        )


def _installed() -> bool:
    try:
        return importlib.util.find_spec("wandb") is not None
    except ImportError:  # a meta-path hook may refuse instead of answering None
        return False


class WandbWriter:
    """One W&B run; files under ``out_dir/wandb`` (offline runs sync later with ``wandb sync``)."""

    def __init__(self, cfg: JobConfig, out: Path):
        import wandb
        from wandb.errors import Error as WandbError

        from locmoe.config import config_to_dict

        w = cfg.logging.wandb
        try:
            self.run = wandb.init(
                project=w.project,
                entity=w.entity or None,
                mode=cast(Literal["online", "offline", "disabled"], w.mode),  # the schema's choices
                dir=str(out),
                name=cfg.name,
                config=config_to_dict(cfg),
            )
        except WandbError as err:  # not logged in, an unknown entity, ...: one line, exit 2
            raise WandbFailed(
                f"logging.wandb: W&B refused to start a run ({' '.join(str(err).split())}); check "
                "logging.wandb.project and .entity, log in with `wandb login`, or set logging.wandb.mode=offline"
            ) from None

    def log(self, tagged: dict[str, float], step: int) -> None:
        self.run.log(tagged, step=step)

    def close(self) -> None:
        self.run.finish()
