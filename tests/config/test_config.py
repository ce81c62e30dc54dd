"""Config loading: defaults, inheritance, overrides, round-trip, and one test per validation rule with its
exact message."""

import dataclasses
import textwrap

import pytest

from locmoe.config import ConfigError, JobConfig, RouterConfig, dump_config, load_config
from locmoe.config.loader import config_from_dict, config_to_dict


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_resolve_router_defaults():
    cfg = load_config()
    assert isinstance(cfg, JobConfig)
    assert cfg.moe.router.kind == "locmoe" and cfg.moe.router.top_k == 2 and cfg.moe.router.gate == "grap"
    switch = load_config(overrides=["moe.router.kind=switch"]).moe.router
    assert (switch.top_k, switch.gate) == (1, "dense")


def test_round_trip_dumps_the_same_yaml(tmp_path):
    cfg = load_config(
        overrides=[
            "moe.num_experts=16",
            "train.lr=1e-3",
            "parallel.placement=explicit",
            "parallel.placement_table=[0,0,0,0,1,1,1,1,2,2,2,2,3,3,3,3]",
        ]
    )
    text = dump_config(cfg)
    again = load_config(write(tmp_path, "dumped.yaml", text))
    assert again == cfg
    assert dump_config(again) == text
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_defaults_inheritance_merges_sections(tmp_path):
    write(
        tmp_path,
        "base.yaml",
        """
        model: {d_model: 64, n_heads: 2}
        moe: {num_experts: 4, router: {kind: gshard}}
    """,
    )
    child = write(
        tmp_path,
        "child.yaml",
        """
        defaults: base.yaml
        moe: {router: {aux_loss_coef: 0.5}}
    """,
    )
    cfg = load_config(child)
    assert cfg.model.d_model == 64 and cfg.moe.num_experts == 4
    assert cfg.moe.router.kind == "gshard" and cfg.moe.router.aux_loss_coef == 0.5


def test_overrides_win_over_files_and_parse_yaml_values(tmp_path):
    path = write(tmp_path, "job.yaml", "train: {steps: 10}\n")
    cfg = load_config(path, ["train.steps=20", "train.lr=1e-3", "logging.progress=false", "moe.domains.names=[a]"])
    assert cfg.train.steps == 20 and cfg.train.lr == pytest.approx(1e-3) and cfg.logging.progress is False


def test_inheritance_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "defaults: b.yaml\n")
    write(tmp_path, "b.yaml", "defaults: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"--set: 'train.steps' is not of the form section.field=value"):
        load_config(overrides=["train.steps"])


RULES = [
    (
        ["moe.router.kindd=switch"],
        "moe.router.kindd: unknown field; did you mean 'kind'? allowed: "
        f"{sorted(f.name for f in dataclasses.fields(RouterConfig))}",
    ),
    (["trian.steps=3"], "trian: unknown field; did you mean 'train'?"),
    (["train.steps=ten"], "train.steps: expected an integer, got 'ten'"),
    (["train.steps=2.5"], "train.steps: expected an integer, got 2.5"),
    (["logging.progress=3"], "logging.progress: expected true or false, got 3"),
    (["name=7"], "name: expected a string, got 7"),
    (["train.lr=fast"], "train.lr: expected a number, got 'fast'"),
    (["moe.domains.names=a"], "moe.domains.names: expected a list, got 'a'"),
    (["train.lr=0"], "train.lr: 0.0 is not allowed: must be > 0"),
    (["moe.router.aux_loss_coef=-0.1"], "moe.router.aux_loss_coef: -0.1 is not allowed: must be >= 0"),
    (["moe.router.locality_loss_coef=-1"], "moe.router.locality_loss_coef: -1.0 is not allowed: must be >= 0"),
    (["moe.router.rho=1.5"], "moe.router.rho: 1.5 is not allowed: must be > 0 and <= 1"),
    (
        ["moe.router.kind=top3"],
        "moe.router.kind: 'top3' is not allowed: must be one of ['locmoe', 'gshard', "
        "'switch', 'hash', 'expert_choice']",
    ),
    (
        ["moe.capacity.mode=elastic"],
        "moe.capacity.mode: 'elastic' is not allowed: must be one of ['factor', 'bound', 'dropless']",
    ),
    (["moe.router.top_k=9"], "moe.router.top_k: 9 must be <= the experts a token may use (8; set by moe.num_experts)"),
    (
        ["moe.domains.num_domains=4", "moe.router.top_k=3"],
        "moe.router.top_k: 3 must be <= the experts a token may use (2; set by moe.domains.num_domains)",
    ),
    (
        ["moe.router.kind=gshard", "moe.router.top_k=3"],
        "moe.router.top_k: 3 is not allowed for router "
        "'gshard', which routes each token to exactly 2 expert(s): set top_k: 2 or null",
    ),
    (
        ["moe.num_experts=12", "moe.router.gate=dense", "parallel.expert_parallel_size=8"],
        "moe.num_experts: 12 is not divisible by parallel.expert_parallel_size (8)",
    ),
    (
        ["moe.num_experts=6"],
        "moe.num_experts: 6 must divide model.d_model (128): the GrAP gate cuts the hidden vector into E equal groups",
    ),
    (
        ["moe.domains.num_domains=3"],
        "moe.domains.num_domains: 3 must divide moe.num_experts (8) so that every "
        "domain gets an equal group of experts",
    ),
    (
        ["moe.router.kind=expert_choice", "moe.capacity.mode=dropless"],
        "moe.capacity.mode: 'dropless' is not "
        "allowed for router expert_choice, whose experts each pick ceil(factor*k*T/E) tokens: use factor",
    ),
    (
        ["moe.router.kind=hash", "moe.capacity.mode=bound"],
        "moe.capacity.mode: 'bound' is not allowed for router "
        "hash: the bound is measured from the angles between tokens and gate vectors, and the hash router has no gate",
    ),
    (
        ["moe.domains.num_domains=16"],
        "moe.domains.num_domains: 16 domains for 8 experts would leave domains with "
        "no expert; each domain needs at least one (num_domains <= moe.num_experts)",
    ),
    (["model.n_heads=3"], "model.n_heads: 3 must divide model.d_model (128)"),
    (["model.n_heads=128"], "model.n_heads: 128 leaves an odd head size 1; rotary embeddings need an even head size"),
    (["model.dense_layers=5"], "model.dense_layers: 5 must be <= model.n_layers (4)"),
    (["data.seq_len=512"], "data.seq_len: 512 must be <= model.max_seq_len (256)"),
    (
        ["parallel.placement=explicit", "parallel.placement_table=[0,1]"],
        "parallel.placement_table: has 2 entries; placement explicit needs one rank per expert (8)",
    ),
    (
        ["parallel.placement_table=[0,1]"],
        "parallel.placement_table: is only read with placement explicit, not 'contiguous'",
    ),
    (
        ["parallel.nodes=2"],
        "parallel.nodes: nodes=2, devices_per_node=0: set both to emulate a topology, or "
        "both to 0 to take it from the launcher",
    ),
    (["train.min_lr=1.0"], "train.min_lr: 1.0 must be <= train.lr (0.003)"),
    (["train.warmup_steps=500"], "train.warmup_steps: 500 must be <= train.steps (200)"),
    (["data.sources=[{path: ''}]"], "data.sources[0].path: is empty: name a file or folder"),
    (["data.sources=[{path: a.txt, domain: 2}]"], "data.sources[0].domain: 2 must be < moe.domains.num_domains (1)"),
    (["data.sources=[{path: a.txt, fromat: text}]"], "data.sources[0].fromat: unknown field; did you mean 'format'?"),
    (["version=2"], "version: 2 is not supported by this locmoe: the config format version is 1"),
    (
        ["parallel.overlap_grad_reduce=true", "parallel.backend=mindspore"],
        "parallel.overlap_grad_reduce: true needs the torch backend; allowed with mindspore: false",
    ),
    (
        ["parallel.overlap_grad_reduce=true", "parallel.shard=full"],
        "parallel.overlap_grad_reduce: true with parallel.shard 'full': FSDP already reduces during the backward",
    ),
]


@pytest.mark.parametrize("overrides,message", RULES, ids=[r[1].split(":")[0] + f"#{i}" for i, r in enumerate(RULES)])
def test_each_rule_raises_one_clear_error(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert str(info.value).startswith(message)


def test_error_names_the_field():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["moe.capacity.factor=-2"])
    assert info.value.field == "moe.capacity.factor"
