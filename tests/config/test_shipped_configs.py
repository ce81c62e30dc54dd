"""Every YAML file we ship loads, and each router variant changes exactly the router it names."""
from pathlib import Path

import pytest

from locmoe.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
JOBS = sorted(p for p in CONFIGS.glob("*.yaml"))
VARIANTS = sorted((CONFIGS / "routers").glob("*.yaml"))


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.stem)
def test_job_loads(job):
    cfg = load_config(job)
    assert cfg.name == job.stem


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.stem)
def test_router_variant_layers_over_a_job(variant):
    base = load_config(CONFIGS / "tiny_cpu.yaml")
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", layers=[variant])
    assert cfg.moe.router.kind == variant.stem
    assert cfg.model == base.model and cfg.train == base.train  # only the MoE section moves


def test_overrides_apply_after_layers():
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", ["moe.capacity.factor=2.0"], layers=[VARIANTS[0]])
    assert cfg.moe.capacity.factor == 2.0


def test_all_four_router_variants_ship():
    assert {p.stem for p in VARIANTS} == {"locmoe", "gshard", "switch", "hash"}
