"""The ``locmoe`` command line: every subcommand has --help; route-demo compares the routers."""
import json
import subprocess
import sys

import pytest

from locmoe.cli import COMMANDS


def run(*args):
    return subprocess.run([sys.executable, "-m", "locmoe", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_subcommand():
    out = run("--help")
    assert out.returncode == 0
    for name in ("train", "export", "plan", "bench", "route-demo"):
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help(name):
    out = run(name, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: locmoe " + name)


def test_route_demo_shows_locmoe_keeping_copies_in_the_node(tmp_path):
    out = run("route-demo", "--json", str(tmp_path / "demo.json"))
    assert out.returncode == 0, out.stderr
    assert "2 nodes x 4 devices" in out.stdout
    rows = {r["router"]: r for r in json.loads((tmp_path / "demo.json").read_text())["rows"]}
    assert set(rows) == {"locmoe", "gshard", "switch"}
    assert rows["locmoe"]["cross_node"] < rows["gshard"]["cross_node"]
    for r in rows.values():
        assert r["on_rank"] + r["in_node"] + r["cross_node"] == pytest.approx(1.0)
        assert 0.0 <= r["dropped"] <= 1.0


def test_config_error_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("moe: {num_expert: 8}\n")
    out = run("train", str(bad))
    assert out.returncode == 2
    assert "config error: moe.num_expert: unknown field; did you mean 'num_experts'?" in out.stderr
