"""Training logs, framework-free: tqdm on rank 0, tensorboardX scalars and expert-load heatmaps, and a
``metrics.jsonl`` file (one JSON object per logged step) that scripts and tests read back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from locmoe.config.schema import JobConfig


class TrainLogger:
    def __init__(self, cfg: JobConfig, is_main: bool, start_step: int):
        self.cfg, self.is_main = cfg, is_main
        self.out = Path(cfg.train.out_dir)
        self.bar = self.writer = self.jsonl = None
        self.loads: dict[int, list] = {}
        if not is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        if cfg.logging.tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=start_step)
        if cfg.logging.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=cfg.name, dynamic_ncols=True)

    def step(self, step: int, scalars: Optional[dict] = None) -> None:
        """Advance the bar; with ``scalars``, also write them (tensorboard + metrics.jsonl)."""
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.update(1)
        if not scalars:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: f"{scalars[k]:.4g}" for k in ("loss", "val_loss", "tokens_per_s")
                                  if k in scalars})
        if self.writer is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(_tag(key), value, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()

    def expert_load(self, step: int, layer: int, load: np.ndarray) -> None:
        """Remember a layer's per-expert load; every heatmap_every steps draw steps × experts as an image."""
        if not self.is_main or self.writer is None or not self.cfg.logging.heatmap_every:
            return
        self.loads.setdefault(layer, []).append(np.asarray(load, dtype=np.float64))
        if step % self.cfg.logging.heatmap_every == 0:
            self.writer.add_image(f"expert_load/layer_{layer}", heatmap(np.stack(self.loads[layer])), step)
            self.loads[layer] = []

    def message(self, text: str) -> None:
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        for h in (self.bar, self.writer, self.jsonl):
            if h is not None:
                h.close()


def heatmap(loads: np.ndarray, scale: int = 8) -> np.ndarray:
    """[steps, E] loads → a [3, H, W] uint8 image (rows: logged steps, columns: experts; dark = cold,
    bright = hot, each row normalised by its mean so imbalance shows the same at every step)."""
    rel = loads / np.maximum(loads.mean(axis=1, keepdims=True), 1e-9)
    v = np.clip(rel / 2.0, 0.0, 1.0)                    # 2x the mean load or more is white
    rgb = np.stack([v, v ** 2, 1.0 - np.abs(v - 0.5) * 2 * (v < 0.5)], axis=0)
    img = np.repeat(np.repeat(rgb, scale, axis=1), scale, axis=2)
    return (img * 255).astype(np.uint8)


def _tag(key: str) -> str:
    groups = {"loss": "train", "lm_loss": "train", "aux_loss": "train", "locality_loss": "train", "lr": "train",
              "grad_norm": "train", "val_loss": "val", "tokens_per_s": "perf", "step_time_s": "perf"}
    return f"{groups.get(key, 'moe')}/{key}"
