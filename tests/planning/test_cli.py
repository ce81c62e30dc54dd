"""``locmoe plan``: every subcommand has --help, plans are written as PlacementTables, errors exit 2."""

import json
import subprocess
import sys

import pytest

from locmoe.cli.plan import SUBCOMMANDS
from locmoe.export.manifest import PlacementTable
from locmoe.placement.synthetic import planted_trace


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "locmoe", "plan", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    return str(
        planted_trace(3000, 16, 2, 3, groups=4, strength=0.8, skew=0.6, seed=0).save(
            tmp_path_factory.mktemp("t") / "trace.npz"
        )
    )


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name):
    out = run(name, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: locmoe plan {name}")


def test_place_then_replicate_write_placement_tables(tmp_path, trace_path):
    out = run(
        "place",
        trace_path,
        "--devices",
        "4",
        "--time-limit",
        "2",
        "--out",
        str(tmp_path / "p.json"),
        "--json",
        str(tmp_path / "p_rows.json"),
    )
    assert out.returncode == 0, out.stderr
    assert "round_robin" in out.stdout and "exflow" in out.stdout
    table = PlacementTable.load(tmp_path / "p.json").validate(num_experts=16)
    assert table.num_devices == 4 and table.moe_layers == [0, 1, 2] and table.source.startswith("exflow")
    rows = json.loads((tmp_path / "p_rows.json").read_text())["rows"]
    assert rows[-1]["hops"] <= rows[0]["hops"]  # ExFlow vs round-robin
    out = run(
        "replicate",
        trace_path,
        "--devices",
        "4",
        "--base",
        str(tmp_path / "p.json"),
        "--slots",
        "1",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert out.returncode == 0, out.stderr
    replicated = PlacementTable.load(tmp_path / "r.json")
    assert replicated.expert_to_device == table.expert_to_device and replicated.replicas


def test_affinity_prints_a_row_per_layer_pair(trace_path):
    out = run("affinity", trace_path, "--devices", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") >= 5 and "entropy_ratio" in out.stdout


def test_trace_from_another_model_is_refused(trace_path):
    out = run("place", trace_path, "--devices", "4", "--expect", '{"num_experts": 64, "top_k": 2}')
    assert out.returncode == 2
    assert "is a trace from another model: num_experts = 16 in the trace, 64 expected" in out.stderr


def test_infeasible_budget_is_refused():
    out = run("deploy", "--budget", "a100-40gb=2", "--requests", "10")
    assert out.returncode == 2
    assert "error: infeasible budget: model mixtral-8x7b-like needs 93 GB of weights" in out.stderr


def test_simulate_with_given_stats(tmp_path):
    stats = tmp_path / "stats.json"
    stats.write_text(
        json.dumps(
            {
                "locmoe": {"on_rank": 0.1, "in_node": 0.5, "cross_node": 0.4},
                "gshard": {"on_rank": 0.01, "in_node": 0.05, "cross_node": 0.94},
            }
        )
    )
    out = run("simulate", "--stats", str(stats), "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    rows = {r["system"]: r for r in json.loads((tmp_path / "s.json").read_text())["rows"]}
    assert rows["locmoe"]["step_ms"] < rows["gshard"]["step_ms"]


def test_plans_are_written_only_where_out_says(tmp_path, trace_path):
    for what in ("place", "replicate"):
        out = run(what, trace_path, "--devices", "4", "--time-limit", "2", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "placement not written (pass --out FILE to write it)" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_one_expert_per_device_says_why_the_table_ties(tmp_path):
    trace = planted_trace(600, 8, 2, 2, groups=4, strength=0.8, skew=0.6, seed=0).save(tmp_path / "t8.npz")
    out = run("place", str(trace), "--devices", "8", "--time-limit", "2")
    assert out.returncode == 0, out.stderr
    assert "note: 8 experts on 8 devices is one expert per device: round_robin and contiguous are" in out.stdout
