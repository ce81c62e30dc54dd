"""A replicated placement in the layout DeepSeek's EPLB returns (``rebalance_experts``) and vLLM / SGLang
keep for their expert-parallel load balancers; int64 throughout, as EPLB's tensors.

Legend: L MoE layers, E logical experts, D devices, S physical slots per device, P = D * S physical
experts, X the most replicas any logical expert has (over all layers).

    physical_to_logical_map  [L, P]     the logical expert in each physical slot; device of slot p = p // S
    logical_to_physical_map  [L, E, X]  the physical slots of each logical expert, ascending, padded with -1
    logical_replica_count    [L, E]     how many slots each logical expert has

Physical slots are device-major (GPU g holds slots g*S .. g*S+S-1: EPLB's and SGLang's convention): first
the device's primary experts, then its replicas, both by expert id. Every device has S slots, S the largest
number any device uses in any layer; a slot the plan leaves empty holds a second copy of one of that
device's own primary experts (EPLB layouts have no empty slots). Fillers never change which devices hold an
expert; ``filler_slots`` lists them.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locmoe.atomic_io import atomic_write_bytes, atomic_write_text
from locmoe.placement.errors import PlacementError
from locmoe.placement.replication import ReplicatedLayer

FORMAT_VERSION = 1


@dataclass(kw_only=True)
class EplbArrays:
    physical_to_logical: np.ndarray  # [L, P] int64
    logical_to_physical: np.ndarray  # [L, E, X] int64, -1 padded
    logical_count: np.ndarray  # [L, E] int64
    filler: np.ndarray  # [L, P] bool: slots that only fill a device
    num_devices: int
    moe_layers: list

    @property
    def slots_per_device(self) -> int:
        return self.physical_to_logical.shape[1] // self.num_devices

    def to_json(self) -> dict:
        L, P = self.physical_to_logical.shape
        E = self.logical_count.shape[1]
        return {
            "format": "eplb",
            "format_version": FORMAT_VERSION,
            "dtype": "int64",
            "num_devices": self.num_devices,
            "num_logical_experts": E,
            "num_physical_experts": P,
            "num_redundant_experts": P - E,
            "physical_experts_per_device": self.slots_per_device,
            "moe_layers": list(self.moe_layers),
            "physical_to_logical_map": self.physical_to_logical.tolist(),
            "logical_to_physical_map": self.logical_to_physical.tolist(),
            "logical_replica_count": self.logical_count.tolist(),
            "filler_slots": [np.flatnonzero(row).tolist() for row in self.filler],
        }


def device_slots(layer: ReplicatedLayer) -> list[list[int]]:
    """Per device, the experts it holds: its primaries, then its replicas (each by expert id)."""
    out = []
    for g in range(layer.num_devices):
        primaries = [int(e) for e in np.flatnonzero(layer.primary == g)]
        replicas = sorted(e for e, devs in enumerate(layer.replicas) if g in devs)
        out.append(primaries + replicas)
    return out


def eplb_arrays(layers: list[ReplicatedLayer], moe_layers: list[int]) -> EplbArrays:
    """The EPLB arrays of one :class:`ReplicatedLayer` per MoE layer (``moe_layers``: their block indices)."""
    if not layers:
        raise PlacementError("no MoE layers to lay out")
    D, E = layers[0].num_devices, len(layers[0].primary)
    per_layer = [device_slots(layer) for layer in layers]
    S = max(len(slots) for dev in per_layer for slots in dev)
    L, P = len(layers), D * S
    phy = np.empty((L, P), dtype=np.int64)
    filler = np.zeros((L, P), dtype=bool)
    for l, devices in enumerate(per_layer):
        for g, held in enumerate(devices):
            own = held[: int((layers[l].primary == g).sum())] or held or [0]
            for j in range(S):
                if j < len(held):
                    phy[l, g * S + j] = held[j]
                else:
                    phy[l, g * S + j], filler[l, g * S + j] = own[(j - len(held)) % len(own)], True
    count = np.stack([np.bincount(row, minlength=E) for row in phy]).astype(np.int64)
    X = int(count.max())
    log2phy = np.full((L, E, X), -1, dtype=np.int64)
    for l in range(L):
        for e in range(E):
            slots = np.flatnonzero(phy[l] == e)
            log2phy[l, e, : len(slots)] = slots
    return EplbArrays(
        physical_to_logical=phy,
        logical_to_physical=log2phy,
        logical_count=count,
        filler=filler,
        num_devices=D,
        moe_layers=[int(m) for m in moe_layers],
    )


def write_eplb(arrays: EplbArrays, placement_out: str | Path) -> tuple[Path, Path]:
    """``<placement stem>.eplb.json`` and ``.eplb.npz`` beside the placement file (npz: the three int64
    arrays and the MoE layer indices; no pickled objects, ``np.load(..., allow_pickle=False)`` reads it)."""
    base = Path(placement_out)
    json_path, npz_path = base.with_suffix(".eplb.json"), base.with_suffix(".eplb.npz")
    atomic_write_text(json_path, json.dumps(arrays.to_json()) + "\n")
    buf = io.BytesIO()
    np.savez(
        buf,
        physical_to_logical_map=arrays.physical_to_logical,
        logical_to_physical_map=arrays.logical_to_physical,
        logical_replica_count=arrays.logical_count,
        moe_layers=np.asarray(arrays.moe_layers, dtype=np.int64),
    )
    atomic_write_bytes(npz_path, buf.getvalue())
    return json_path, npz_path


def sglang_location(eplb: dict, num_hidden_layers: int) -> dict:
    """SGLang's ``--init-expert-location`` JSON: ``physical_to_logical_map`` over *all* decoder layers (its
    expert-location metadata has one row per hidden layer); a dense block's row is the trivial map."""
    P, E = eplb["num_physical_experts"], eplb["num_logical_experts"]
    rows = {m: r for m, r in zip(eplb["moe_layers"], eplb["physical_to_logical_map"])}
    if max(rows) >= num_hidden_layers:
        raise PlacementError(f"--num-hidden-layers {num_hidden_layers}: the placement has MoE layer {max(rows)}")
    trivial = [p % E for p in range(P)]
    return {"physical_to_logical_map": [rows.get(i, trivial) for i in range(num_hidden_layers)]}


def main(argv=None) -> int:
    """``python -m locmoe.placement.eplb PLACEMENT.eplb.json --num-hidden-layers N --sglang OUT.json``."""
    p = argparse.ArgumentParser(description="write SGLang's --init-expert-location file from an EPLB JSON")
    p.add_argument("eplb", help="the .eplb.json `locmoe plan replicate` wrote")
    p.add_argument("--num-hidden-layers", type=int, required=True, help="the model's decoder layers")
    p.add_argument("--sglang", required=True, help="output JSON for `sglang.launch_server --init-expert-location`")
    a = p.parse_args(argv)
    data = json.loads(Path(a.eplb).read_text(encoding="utf-8"))
    atomic_write_text(a.sglang, json.dumps(sglang_location(data, a.num_hidden_layers)) + "\n")
    print(
        f"wrote {a.sglang}: launch SGLang with --init-expert-location {a.sglang} --ep-num-redundant-experts "
        f"{data['num_redundant_experts']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
