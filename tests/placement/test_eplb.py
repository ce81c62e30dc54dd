"""The EPLB arrays ``locmoe plan replicate`` writes describe the same placement as its placement.json: every
logical expert's replicas sit on exactly the devices the table names, every physical slot holds an expert
its device holds, and the three arrays agree with each other (EPLB's conventions: int64, device-major
slots, -1 padding to the largest replica count)."""

import json
import subprocess
import sys

import numpy as np

from locmoe.export.manifest import PlacementTable
from locmoe.placement.eplb import eplb_arrays, sglang_location
from locmoe.placement.replication import ReplicatedLayer
from locmoe.placement.synthetic import planted_trace


def check_same_placement(table: PlacementTable, eplb: dict, phy, log2phy, count) -> None:
    D, S, E = table.num_devices, eplb["physical_experts_per_device"], len(table.expert_to_device[0])
    assert phy.dtype == log2phy.dtype == count.dtype == np.int64
    assert phy.shape == (len(table.moe_layers), D * S) and log2phy.shape[:2] == (len(table.moe_layers), E)
    assert log2phy.shape[2] == count.max() and eplb["moe_layers"] == table.moe_layers
    for l in range(len(table.moe_layers)):
        fillers = set(eplb["filler_slots"][l])
        for e in range(E):
            devices = {table.expert_to_device[l][e], *(table.replicas[l][e] if table.replicas else [])}
            slots = [p for p in log2phy[l, e] if p >= 0]
            assert {p // S for p in slots} == devices  # every replica, nowhere else
            assert len(slots) == count[l, e]
            assert list(log2phy[l, e, len(slots) :]) == [-1] * (log2phy.shape[2] - len(slots))
            assert all(phy[l, p] == e for p in slots) and slots == sorted(slots)
            real = [p for p in slots if p not in fillers]
            assert len(real) == len(devices)  # one slot per holder
        for p in range(D * S):  # every slot's expert
            e, g = phy[l, p], p // S
            assert g == table.expert_to_device[l][e] or g in table.replicas[l][e]


def test_plan_replicate_writes_eplb_arrays_of_the_same_placement(tmp_path):
    trace = planted_trace(3000, 16, 2, 3, groups=4, strength=0.8, skew=0.9, seed=1).save(tmp_path / "t.npz")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "locmoe",
            "plan",
            "replicate",
            str(trace),
            "--devices",
            "4",
            "--slots",
            "2",
            "--grouping",
            "contiguous",
            "--out",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    table = PlacementTable.load(tmp_path / "r.json")
    assert any(any(r) for layer in table.replicas for r in layer)  # the plan did replicate
    eplb = json.loads((tmp_path / "r.eplb.json").read_text())
    arrays = np.load(tmp_path / "r.eplb.npz", allow_pickle=False)
    for name in ("physical_to_logical_map", "logical_to_physical_map", "logical_replica_count"):
        assert np.array_equal(arrays[name], np.asarray(eplb[name]))
    check_same_placement(
        table,
        eplb,
        arrays["physical_to_logical_map"],
        arrays["logical_to_physical_map"],
        arrays["logical_replica_count"],
    )
    assert eplb["num_physical_experts"] == 16 + eplb["num_redundant_experts"] == 4 * eplb["physical_experts_per_device"]


def test_uneven_replicas_are_filled_with_the_devices_own_experts():
    layers = [
        ReplicatedLayer([0, 0, 1, 1], [[1], [], [], []], 2),  # device 1 gets a replica of 0
        ReplicatedLayer([0, 1, 0, 1], [[], [], [], []], 2),
    ]  # no replicas in this layer
    a = eplb_arrays(layers, [1, 3])
    assert a.slots_per_device == 3
    assert a.physical_to_logical.tolist() == [[0, 1, 0, 2, 3, 0], [0, 2, 0, 1, 3, 1]]
    assert a.filler.tolist() == [[False, False, True, False, False, False], [False, False, True, False, False, True]]
    assert a.logical_count.tolist() == [[3, 1, 1, 1], [2, 2, 1, 1]]
    assert a.logical_to_physical[0, 0].tolist() == [0, 2, 5] and a.logical_to_physical[0, 1].tolist() == [1, -1, -1]
    loc = sglang_location(a.to_json(), 4)
    assert [len(r) for r in loc["physical_to_logical_map"]] == [6] * 4
    assert loc["physical_to_logical_map"][1] == a.physical_to_logical[0].tolist()
    assert loc["physical_to_logical_map"][0] == [0, 1, 2, 3, 0, 1]  # a dense block: trivial
