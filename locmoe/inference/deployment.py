"""Framework-free checks of a serving deployment: does this export belong to this checkpoint, and does the
launched device count fit its expert placement. Both backends call these before building anything.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from locmoe.config.schema import JobConfig
from locmoe.export.manifest import ExportError, PlacementTable, RouterManifest
from locmoe.inference.errors import InferenceError
from locmoe.model_spec import moe_layer_indices
from locmoe.parallel.topology import ExpertPlacement, Topology


def check_export_matches(
    manifest: RouterManifest,
    cfg: JobConfig,
    step: int,
    router_tensors: Mapping[str, np.ndarray],
    checkpoint_tensors: Mapping[str, np.ndarray],
) -> None:
    """Raise an :class:`ExportError` listing every way the export disagrees with the checkpoint's model."""

    r = cfg.moe.router
    expected = {
        "num_experts": cfg.moe.num_experts,
        "d_model": cfg.model.d_model,
        "vocab_size": cfg.model.vocab_size,
        "moe_layers": moe_layer_indices(cfg.model),
        "router_kind": r.kind,
        "gate": r.gate,
        "top_k": r.top_k,
    }
    wrong = [
        f"{k}: export {getattr(manifest, k)!r}, checkpoint {v!r}"
        for k, v in expected.items()
        if getattr(manifest, k) != v
    ]
    for name, t in sorted(router_tensors.items()):
        ours = checkpoint_tensors.get(name)
        if ours is None or ours.shape != t.shape or not np.array_equal(ours, t, equal_nan=True):
            wrong.append(f"{name} differs")
    if wrong:
        src = manifest.source or {}
        raise ExportError(
            f"the router export does not match the checkpoint (export made from step "
            f"{src.get('step')} of {src.get('checkpoint')}, checkpoint at step {step}): " + "; ".join(wrong[:8])
        )


def serving_placements(manifest: RouterManifest, world_size: int) -> tuple[Topology, dict[int, ExpertPlacement]]:
    """The topology and each MoE layer's expert placement for ``world_size`` processes.

    One process holds every expert (a 1 x 1 topology: no remote experts, so the intra-node-first rule has
    nothing to prefer). Otherwise the processes must be exactly the devices the placement names.
    """
    table = PlacementTable.from_dict(manifest.placement).validate(manifest.num_experts)
    if any(any(reps) for layer in table.replicas for reps in layer):
        raise InferenceError(
            "the export's placement replicates experts; the torch serving path places each "
            "expert on one device (re-export without replicas)"
        )
    E = manifest.num_experts
    if world_size == 1:
        topo = Topology(1, 1)
        return topo, {i: ExpertPlacement.contiguous(E, topo) for i in table.moe_layers}
    if world_size != table.num_devices:
        raise InferenceError(
            f"the export places the experts on {table.num_devices} devices "
            f"({manifest.topology.get('nodes')} nodes x {manifest.topology.get('devices_per_node')}),"
            f" but {world_size} processes were launched; launch {table.num_devices} (or 1)"
        )
    topo = Topology(int(manifest.topology["nodes"]), int(manifest.topology["devices_per_node"]))
    if topo.world_size != world_size:
        raise InferenceError(
            f"the export's topology {topo} has {topo.world_size} devices, its placement {table.num_devices}"
        )
    return topo, {i: ExpertPlacement.explicit(row, topo) for i, row in zip(table.moe_layers, table.expert_to_device)}
