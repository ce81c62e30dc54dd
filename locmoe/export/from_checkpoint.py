"""``locmoe export CHECKPOINT OUT_DIR``: the routers of a checkpoint (either backend) as an export directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from locmoe import __version__
from locmoe.checkpoint.directory import TOKENIZER_FILE, CheckpointError, load_state, resolve
from locmoe.checkpoint.sharded_weights import model_tensors
from locmoe.config import config_from_dict
from locmoe.export.manifest import PlacementTable, RouterManifest
from locmoe.export.router_export import write_router_export
from locmoe.model_spec import moe_layer_indices
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.routing.domains import domain_expert_groups


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Read the routers' tensors and settings from a checkpoint and write ``out_dir`` atomically (it must be
    new, empty, or a previous export: nothing else is replaced). The tokenizer file travels along."""
    path = resolve(checkpoint)
    state = load_state(path)
    cfg = config_from_dict(state["config"])

    check_not_inside(path, Path(out_dir))
    layers = moe_layer_indices(cfg.model)
    tensors = {}
    with model_tensors(path) as weights:
        keys = set(weights.keys())
        for i in layers:
            for name in ("gate_weight", "gate_bias", "angle_ema", "selection_bias", "hash_table"):
                key = f"layers.{i}.moe.router.{name}"
                if key in keys:
                    tensors[key] = weights.get_tensor(key)
    lay = state["layout"]
    topo = Topology(lay["nodes"], lay["devices_per_node"])
    placement = ExpertPlacement.from_config(cfg.parallel, cfg.moe.num_experts, topo)
    table = PlacementTable(
        topo.world_size, layers, [list(placement.expert_to_rank) for _ in layers], source=cfg.parallel.placement
    )
    r, c, dom = cfg.moe.router, cfg.moe.capacity, cfg.moe.domains
    assert r.top_k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    manifest = RouterManifest(
        router_kind=r.kind,
        gate=r.gate,
        top_k=r.top_k,
        num_experts=cfg.moe.num_experts,
        d_model=cfg.model.d_model,
        vocab_size=cfg.model.vocab_size,
        moe_layers=layers,
        temperature=r.temperature,
        rho=r.rho,
        capacity={
            "mode": c.mode,
            "factor": c.factor,
            "bound_rule": c.bound_rule,
            "min_factor": c.min_factor,
            "angle_quantile": c.angle_quantile,
            "slack": c.slack,
            "hash_seed": r.hash_seed,
        },
        topology={"nodes": topo.num_nodes, "devices_per_node": topo.devices_per_node},
        placement=table.to_dict(),
        domains={
            "num_domains": dom.num_domains,
            "seed": dom.seed,
            "names": dom.names,
            "groups": domain_expert_groups(dom.num_domains, cfg.moe.num_experts, dom.seed).tolist(),
        },
        tensors={},
        source={
            "checkpoint": str(path),
            "step": state["step"],
            "backend": state.get("backend"),
            "locmoe_version": __version__,
            "config": state["config"],
        },
    )
    tokenizer = path / TOKENIZER_FILE
    return write_router_export(
        out_dir, manifest, {k: np.asarray(v) for k, v in tensors.items()}, tokenizer if tokenizer.is_file() else None
    )


def check_not_inside(checkpoint: Path, out: Path) -> None:
    """An export may not be written over the checkpoint it reads, nor over the run directory holding it."""
    ckpt, target = checkpoint.resolve(), out.resolve()
    if target == ckpt or target in ckpt.parents:
        raise CheckpointError(f"export directory {out} holds the checkpoint {checkpoint}; choose another one")
