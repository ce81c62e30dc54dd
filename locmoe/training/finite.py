"""A run that diverged: NaN/Inf in the loss, the activations or the weights. The run stops with one message
(exit 2) and never seals a checkpoint of non-finite weights, so the newest checkpoint stays the last good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from locmoe.errors import LocMoEError


class NonFiniteError(LocMoEError, FloatingPointError):
    """NaN/Inf where training needs finite numbers (still a FloatingPointError for code that catches that)."""


def advice(out_dir: str | Path) -> str:
    """Where to go back to: the newest sealed checkpoint, which is never a diverged one."""
    from locmoe.checkpoint.directory import latest

    good = latest(out_dir)
    where = (
        f"the last good checkpoint is {good}: resume from it (--resume) with a lower train.lr or a "
        "smaller train.grad_clip"
        if good is not None
        else "no checkpoint was sealed yet: restart with a lower train.lr or a smaller train.grad_clip"
    )
    return where


def nonfinite_error(out_dir: str | Path, step: int, what: Optional[str], rank: int) -> NonFiniteError:
    """The error of a checkpoint refused because step ``step``'s update made ``what`` non-finite."""
    where = f"{what} on rank {rank}" if what else "another rank's weights"
    return NonFiniteError(
        f"step {step}: the update made the weights non-finite (NaN/Inf in {where}); step {step} "
        f"is not checkpointed and the run stops; {advice(out_dir)}"
    )
