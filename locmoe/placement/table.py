"""Plans as the export format's :class:`~locmoe.export.manifest.PlacementTable` (what the inference path
and the training topology load), and back."""

from __future__ import annotations

import numpy as np

from locmoe.export.manifest import PlacementTable
from locmoe.placement.replication import ReplicatedLayer


def to_placement_table(
    assignment: np.ndarray,
    num_devices: int,
    moe_layers: list[int],
    source: str,
    layers: list[ReplicatedLayer] | None = None,
) -> PlacementTable:
    """A table from an assignment [L, E] and, optionally, each layer's replicas."""
    replicas = [[sorted(int(d) for d in devs) for devs in layer.replicas] for layer in layers] if layers else []
    table = PlacementTable(
        num_devices=int(num_devices),
        moe_layers=[int(m) for m in moe_layers],
        expert_to_device=[[int(d) for d in row] for row in np.asarray(assignment)],
        replicas=replicas,
        source=source,
    )
    return table.validate(num_experts=int(np.asarray(assignment).shape[1]))


def from_placement_table(table: PlacementTable) -> tuple[np.ndarray, list[ReplicatedLayer]]:
    """(assignment [L, E], one :class:`ReplicatedLayer` per layer) of a table."""
    assignment = np.asarray(table.expert_to_device, dtype=np.int64)
    layers = []
    for l, row in enumerate(assignment):
        reps = [list(r) for r in table.replicas[l]] if table.replicas else []
        layers.append(ReplicatedLayer(row, reps, table.num_devices))
    return assignment, layers
