"""Small served models with random weights (no checkpoint) for the KV-cache and export tests."""

from __future__ import annotations

import torch

from backends.torch.inference.loader import build_inference_model, finish, random_weights
from backends.torch.inference.model import InferenceModel
from locmoe.config import load_config
from locmoe.model_spec import moe_layer_indices
from locmoe.parallel.topology import ExpertPlacement, Topology

TINY = [
    "model.d_model=32",
    "model.n_heads=4",
    "model.n_layers=4",
    "model.dense_layers=1",
    "model.moe_every=1",
    "model.d_ff=64",
    "model.max_seq_len=40",
    "data.seq_len=40",
    "moe.num_experts=4",
    "moe.d_expert=48",
    "moe.capacity.mode=dropless",
    "moe.check_finite=false",
    "parallel.device=cpu",
]


def served_model(router: str, *overrides: str, seed: int = 0) -> InferenceModel:
    """One process, fp32, every expert local; ``router`` names configs/routers' kinds."""
    cfg = load_config(overrides=[*TINY, f"moe.router.kind={router}", *overrides])
    topo = Topology(1, 1)
    placements = {i: ExpertPlacement.contiguous(cfg.moe.num_experts, topo) for i in moe_layer_indices(cfg.model)}
    model = random_weights(finish(build_inference_model(cfg, topo, placements, "cpu"), "float32"), seed=seed)
    with torch.no_grad():  # a spread of gate scores, so that routing differs token by token
        for i in model.moe_layers:
            g = model.layers[i].moe.router.gate_weight
            if g is not None:
                g.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed + i))
    return model
