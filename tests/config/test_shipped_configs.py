"""Every YAML file we ship loads, and each router variant changes exactly the router it names."""

from pathlib import Path

import pytest

from locmoe.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
JOBS = sorted(p for p in CONFIGS.glob("*.yaml"))
VARIANTS = sorted((CONFIGS / "routers").glob("*.yaml"))
# the router kind each variant selects: the four named after a router, and the issue-14 variants (the papers'
# LocMoE, and DeepSeek / ST-MoE baselines built on the top-k router gshard)
KIND = {
    "locmoe": "locmoe",
    "gshard": "gshard",
    "switch": "switch",
    "hash": "hash",
    "locmoe_paper": "locmoe",
    "node_limited": "gshard",
    "aux_free": "gshard",
    "st_moe": "gshard",
}


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.stem)
def test_job_loads(job):
    cfg = load_config(job)
    assert cfg.name == job.stem


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda p: p.stem)
def test_router_variant_layers_over_a_job(variant):
    base = load_config(CONFIGS / "tiny_cpu.yaml")
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", layers=[variant])
    assert cfg.moe.router.kind == KIND[variant.stem]
    assert cfg.model == base.model and cfg.train == base.train  # only the MoE section moves


def test_overrides_apply_after_layers():
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", ["moe.capacity.factor=2.0"], layers=[VARIANTS[0]])
    assert cfg.moe.capacity.factor == 2.0


def test_all_router_variants_ship():
    assert {p.stem for p in VARIANTS} == set(KIND)


# ----------------------------------------------------------------------------- found by name, one source


def test_the_checkout_reads_the_top_level_configs_folder():
    """configs/ is the single source: a checkout (and an editable install) reads it in place, and no copy of a
    shipped YAML file lives anywhere else in the package tree (the wheel maps configs/ to locmoe/configs/)."""
    from locmoe.config.shipped import configs_dir

    assert configs_dir() == CONFIGS
    root = CONFIGS.parent
    copies = [p for d in ("locmoe", "backends", "models") for p in (root / d).rglob("*.yaml")]
    assert copies == []


@pytest.mark.parametrize(
    "ref,expected",
    [
        ("tiny_cpu", "tiny_cpu.yaml"),
        ("tiny_cpu.yaml", "tiny_cpu.yaml"),
        ("configs/tiny_cpu.yaml", "tiny_cpu.yaml"),
        ("./configs/tiny_cpu.yaml", "tiny_cpu.yaml"),
        ("gshard", "routers/gshard.yaml"),
        ("routers/gshard", "routers/gshard.yaml"),
        ("configs/routers/gshard.yaml", "routers/gshard.yaml"),
    ],
)
def test_shipped_names(ref, expected):
    from locmoe.config.shipped import find_shipped

    assert find_shipped(ref) == CONFIGS / expected


@pytest.mark.parametrize("ref", ["nope", "/abs/tiny_cpu", "../tiny_cpu", "routers", ""])
def test_not_shipped_names(ref):
    from locmoe.config.shipped import find_shipped

    assert find_shipped(ref) is None


def test_a_file_in_the_working_directory_wins_over_a_shipped_name(tmp_path, monkeypatch):
    """Command-line references (JOB, --with) are read from the working directory first, like any path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu.yaml").write_text("name: mine\n")
    (tmp_path / "gshard").write_text("moe: {router: {kind: switch}}\n")
    cfg = load_config("tiny_cpu.yaml", layers=["gshard"])
    assert cfg.name == "mine" and cfg.moe.router.kind == "switch"
    assert load_config("tiny_cpu").name == "tiny_cpu"  # no file called tiny_cpu: the shipped one


def test_defaults_are_relative_to_their_file_then_shipped(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "base.yaml").write_text("model: {d_model: 64, n_heads: 2}\nmoe: {num_experts: 4}\n")
    (tmp_path / "jobs" / "job.yaml").write_text("defaults: [base.yaml, routers/gshard.yaml]\nname: job\n")
    monkeypatch.chdir("/")  # not where the files are
    cfg = load_config(tmp_path / "jobs" / "job.yaml")
    assert (cfg.name, cfg.model.d_model, cfg.moe.num_experts, cfg.moe.router.kind) == ("job", 64, 4, "gshard")
