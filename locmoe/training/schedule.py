"""Learning-rate schedule: linear warm-up, then cosine decay to min_lr. Stateless: a function of the step,
so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

from locmoe.config.schema import TrainConfig


def lr_at(step: int, t: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    span = max(t.steps - t.warmup_steps, 1)
    progress = min(max(step - t.warmup_steps, 0) / span, 1.0)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + math.cos(math.pi * progress))
