"""Checkpoints written directly (no training): every ``locmoe.model_spec`` tensor drawn by its init rule, the
router gates widened so routing differs token by token, the routers' angle state set to distinct float64
values (one NaN) so that its round trip is checked too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from locmoe.checkpoint.directory import seal, temp_dir
from locmoe.config import config_to_dict, load_config
from locmoe.model_spec import initial_value, parameter_shapes

SMALL = [
    "model.d_model=32",
    "model.n_heads=4",
    "model.n_layers=4",
    "model.dense_layers=1",
    "model.d_ff=64",
    "model.max_seq_len=64",
    "data.seq_len=64",
    "moe.num_experts=4",
    "moe.d_expert=48",
    "parallel.nodes=1",
    "parallel.devices_per_node=1",
    "parallel.device=cpu",
]


def write_checkpoint(out: Path, *overrides: str, step: int = 7, seed: int = 0) -> Path:
    cfg = load_config(overrides=[*SMALL, f"train.out_dir={out}", *overrides])
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in parameter_shapes(cfg).items():
        value = initial_value(name, cfg, seed)
        if name.endswith("angle_ema"):
            value = rng.uniform(0.1, 1.5, shape)
            value[0] = np.nan
        elif name.endswith("hash_table"):
            value = rng.integers(0, 1 << 20, shape)
        elif name.endswith("gate_weight"):
            value = rng.standard_normal(shape).astype(np.float32)
        weights[name] = value
    tmp = temp_dir(out, step)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / "model.safetensors"))
    layout = {"world_size": 1, "ep_size": 1, "nodes": 1, "devices_per_node": 1, "emulated": False}
    state = {"step": step, "config": config_to_dict(cfg), "layout": layout, "backend": "torch"}
    (tmp / "train_state.json").write_text(json.dumps(state))
    return seal(out, step, {"backend": "torch"})
