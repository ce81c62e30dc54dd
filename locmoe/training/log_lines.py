"""The console lines of a training run without its progress bar (a batch job, a pipe, ``logging.progress:
false``): one line per logged step, as Megatron and torchtitan print, and one closing line.

    step 120/300 | loss 2.4312 | val 2.5011 | 41.3k tok/s | MFU 38.2% | ETA 1m52s
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def step_line(step: int, steps: int, scalars: dict, eta_s: Optional[float]) -> str:
    """One logged step: the loss, the validation loss when this step has one, tokens/s, MFU where the loop
    knows the device's peak, and the time left at the pace since this process started."""
    width = len(str(steps))
    parts = [f"step {step:>{width}}/{steps}"]
    if "loss" in scalars:
        parts.append(f"loss {scalars['loss']:.4f}")
    if "val_loss" in scalars:
        parts.append(f"val {scalars['val_loss']:.4f}")
    if "tokens_per_s" in scalars:
        parts.append(f"{_si(scalars['tokens_per_s'])} tok/s")
    if "mfu" in scalars:
        parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
    if eta_s is not None:
        parts.append(f"ETA {duration(eta_s)}")
    return " | ".join(parts)


def final_line(name: str, last: dict, checkpoint: Optional[Path]) -> str:
    """The closing line: the final validation loss (the number a run is judged by) and where the run is."""
    step = last.get("step")
    val = f"validation loss {last['val_loss']:.4f} at step {step}" if "val_loss" in last else f"step {step}"
    where = f", checkpoint {checkpoint}" if checkpoint is not None else ""
    return f"{name}: done: {val}{where}"


def duration(seconds: float) -> str:
    """``45s``, ``3m07s``, ``2h05m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _si(x: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
