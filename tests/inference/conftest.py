"""A tiny trained checkpoint with its router export (2 nodes x 2 devices, as configs/tiny_cpu.yaml
emulates), plus a second export of the same routers placed on 2 devices (2 nodes x 1)."""

import dataclasses

import pytest

from locmoe.export import PlacementTable, load_router, write_router_export
from tests.training.runs import train


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    train(out, "train.steps=3", "train.warmup_steps=1", "export.at_end=true", "moe.router.gate=dense")
    return out


@pytest.fixture(scope="session")
def export2(tiny, tmp_path_factory):
    """The same routers for a 2-process deployment (a placement planner could have written this)."""
    r = load_router(tiny / "router")
    m = r.manifest
    E = m.num_experts
    table = PlacementTable(2, m.moe_layers, [[e * 2 // E for e in range(E)] for _ in m.moe_layers], source="test")
    m2 = dataclasses.replace(m, topology={"nodes": 2, "devices_per_node": 1}, placement=table.to_dict())
    return write_router_export(tmp_path_factory.mktemp("export2") / "router", m2, r.tensors)
