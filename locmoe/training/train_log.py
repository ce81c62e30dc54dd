"""Training logs, framework-free: on rank 0 a tqdm bar on a terminal or one line per logged step elsewhere
(``locmoe.training.log_lines``), tensorboardX scalars and expert-load heatmaps, the same scalars in W&B when asked
(``locmoe.training.wandb_log``), a ``metrics.jsonl`` file (one JSON object of scalars per logged step) that scripts and
tests read back, and ``expert_load.jsonl`` beside it (one object per logged step and MoE layer: the copies
routed to each expert and each expert's capacity) that ``locmoe report`` draws."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Optional

import numpy as np

from locmoe.config.schema import JobConfig
from locmoe.training import wandb_log
from locmoe.training.log_lines import step_line

LOADS_FILE = "expert_load.jsonl"
HEATMAP_ROWS = 200  # the tensorboard heatmap shows this process's newest logged steps, at most this many

# Every logged scalar's tensorboard group, in one place: losses (and the optimiser's lr / grad norm) under
# train/, validation under val/, throughput under perf/, MoE routing statistics under moe/.
TAG_GROUPS = {
    "loss": "train",
    "lm_loss": "train",
    "aux_objective": "train",
    "aux_loss": "train",
    "locality_loss": "train",
    "lr": "train",
    "grad_norm": "train",
    "val_loss": "val",
    "tokens_per_s": "perf",
    "mfu": "perf",
    "step_time_s": "perf",
    "dropped_fraction": "moe",
    "cross_node_fraction": "moe",
    "in_node_fraction": "moe",
    "capacity": "moe",
    "capacity_bound": "moe",
    "max_expert_load": "moe",
    "cross_node_bytes": "moe",
}


class TrainLogger:
    def __init__(self, cfg: JobConfig, is_main: bool, start_step: int):
        self.cfg, self.is_main = cfg, is_main
        self.out = Path(cfg.train.out_dir)
        self.bar = self.writer = self.wandb = self.jsonl = self.loads_jsonl = None
        self.start, self.started = start_step, time.perf_counter()
        self.history: dict[int, deque] = {}  # layer -> (step, load [E], capacity [E]) rows of the heatmap
        self.to_draw: list[tuple[int, int]] = []  # (step, layer) heatmaps drawn by the next step()
        if not is_main or start_step >= cfg.train.steps:  # a resume with nothing left to train writes nothing
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", LOADS_FILE):  # a resumed run rewrites the steps after its checkpoint
            drop_records_after(self.out / name, start_step)
        self.jsonl = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        self.loads_jsonl = open(self.out / LOADS_FILE, "a", encoding="utf-8")
        if cfg.logging.tensorboard:
            from tensorboardX import SummaryWriter

            # purge the events after the checkpoint's step, not the step itself (metrics.jsonl keeps it too)
            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=start_step + 1)
        # NOTE: a bar redrawn with \r into a file or pipe is hundreds of redraws on one line: there, print lines
        if cfg.logging.progress and sys.stdout.isatty() and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=cfg.name, dynamic_ncols=True)
        if wandb_log.enabled(cfg):
            self.wandb = wandb_log.WandbWriter(cfg, self.out)

    def step(self, step: int, scalars: Optional[dict] = None) -> None:
        """Advance the bar; with ``scalars``, also write them (tensorboard, W&B, metrics.jsonl and, without a
        bar, one console line)."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.update(1)
        self._draw_heatmaps()
        if not scalars:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: f"{scalars[k]:.4g}" for k in ("loss", "val_loss", "tokens_per_s") if k in scalars})
        tagged: dict[str, float] = {_tag(k): v for k, v in scalars.items() if isinstance(v, (int, float))}
        if self.writer is not None:
            for tag, value in tagged.items():
                self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(tagged, step)
        assert self.jsonl is not None  # opened by __init__ on the main rank of a run with steps left
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        if self.bar is None:
            self.message(step_line(step, self.cfg.train.steps, scalars, self._eta(step)))

    def _eta(self, step: int):
        """Seconds left at this process's pace so far (evaluation and checkpoints included), None before a step."""
        done = step - self.start
        if done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * (self.cfg.train.steps - step)

    def expert_load(self, step: int, layer: int, load: np.ndarray, capacity) -> None:
        """Record a layer's per-expert load (copies routed, [E]) and capacity ([E] or one number) of a logged
        step in expert_load.jsonl; every heatmap_every steps (and at the last step) the next ``step()`` draws
        the heatmap (the run's loop calls it outside the tokens/s clock)."""
        if not self.is_main:
            return
        assert self.loads_jsonl is not None  # opened by __init__ on the main rank of a run with steps left
        load = np.asarray(load).astype(np.int64)
        cap = np.broadcast_to(np.asarray(capacity).astype(np.int64), load.shape)
        cap_out = int(cap[0]) if np.all(cap == cap[0]) else cap.tolist()
        self.loads_jsonl.write(
            json.dumps({"step": step, "layer": layer, "load": load.tolist(), "capacity": cap_out}) + "\n"
        )
        self.loads_jsonl.flush()
        every = self.cfg.logging.heatmap_every
        if self.writer is None or not every:
            return
        rows = self.history.setdefault(layer, deque(maxlen=HEATMAP_ROWS))
        rows.append((step, load, cap.copy()))
        if step % every == 0 or step == self.cfg.train.steps:
            self.to_draw.append((step, layer))

    def _draw_heatmaps(self) -> None:
        if not self.to_draw:
            return
        assert self.writer is not None  # expert_load queues heatmaps only for tensorboard
        from locmoe.training.plots import heatmap

        for step, layer in self.to_draw:
            steps, loads, caps = zip(*self.history[layer])
            image = heatmap(steps, np.stack(loads), np.stack(caps), layer)
            self.writer.add_image(f"moe/expert_load/layer_{layer}", image, step, dataformats="CHW")
        self.to_draw = []

    def message(self, text: str) -> None:
        if self.is_main:
            if self.bar is not None:
                self.bar.write(text)
            else:
                print(text, flush=True)  # a pipe is block-buffered: flush, or a batch log shows nothing for minutes

    def close(self) -> None:
        if self.writer is not None:
            self._draw_heatmaps()
        for h in (self.bar, self.writer, self.wandb, self.jsonl, self.loads_jsonl):
            if h is not None:
                h.close()
        self.bar = self.writer = self.wandb = self.jsonl = self.loads_jsonl = None


def drop_records_after(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (and drop a line cut short by a crash), so that after a resume
    from ``step`` every step appears once."""
    if not path.is_file():
        return
    from locmoe.atomic_io import atomic_write_text

    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _tag(key: str) -> str:
    """The tensorboard tag of a scalar; a key missing from TAG_GROUPS falls back by its name."""
    group = TAG_GROUPS.get(key)
    if group is None:
        group = (
            "val"
            if key.startswith("val_")
            else "train"
            if key.endswith(("_loss", "_objective"))
            else "perf"
            if key.endswith(("_per_s", "_time_s"))
            else "moe"
        )
    return f"{group}/{key}"
