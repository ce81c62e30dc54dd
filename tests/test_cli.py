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


# ----------------------------------------------------------------------------- flags: help, defaults, --set


def _options(parser, path=()):
    """(subcommand path, action) of every option of every (sub)parser."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings and "-h" not in action.option_strings:
            yield path, action


def test_every_flag_has_help_that_shows_its_default():
    from locmoe.cli import build_parser
    from locmoe.cli.args import HelpFormatter

    missing, silent = [], []
    for path, action in _options(build_parser()):
        where = f"locmoe {' '.join(path)} {action.option_strings[0]}"
        if not action.help:
            missing.append(where)
            continue
        shown = HelpFormatter("locmoe")._get_help_string(action)
        states = "%(default)" in shown or "default" in shown.lower()
        flag = isinstance(action.default, bool)  # store_true / store_false: the help says what it turns
        if not states and not flag and action.default not in (None, []) and not action.required:
            silent.append(where)
    assert missing == [] and silent == []


def test_help_output_shows_defaults():
    out = run("plan", "place", "--help")
    assert out.returncode == 0
    assert "(default: 30.0)" in out.stdout and "(default: write nothing)" in " ".join(out.stdout.split())


def test_set_takes_several_values_and_repeats():
    from locmoe.cli import build_parser

    args = build_parser().parse_args(
        ["train", "tiny_cpu", "--set", "train.steps=40", "train.lr=1e-3", "--resume", "--set", "moe.num_experts=4"]
    )
    assert args.set == ["train.steps=40", "train.lr=1e-3", "moe.num_experts=4"] and args.resume
    from locmoe.config import load_config

    cfg = load_config(args.config, args.set)
    assert (cfg.train.steps, cfg.train.lr, cfg.moe.num_experts) == (40, 1e-3, 4)


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["plan", "place", "t.npz", "--devices", "8", "--max-tokens", "-5"],
            "argument --max-tokens: -5 is not allowed",
        ),
        (["plan", "place", "t.npz", "--devices", "0"], "argument --devices: 0 is not allowed: must be >= 1"),
        (["plan", "place", "t.npz", "--devices", "8", "--time-limit", "nan"], "must be a finite number"),
        (["plan", "replicate", "t.npz", "--devices", "8", "--threshold", "0.5"], "must be >= 1"),
        (["plan", "deploy", "--requests", "-1"], "argument --requests"),
        (["plan", "deploy", "--rate", "-inf"], "argument --rate"),
        (["plan", "simulate", "--nodes", "0"], "argument --nodes"),
        (["bench", "calibrate", "--out", "p.json", "--reps", "0"], "argument --reps"),
        (["generate", "r", "r/router", "--prompts", "p", "--top-p", "1.5"], "argument --top-p"),
        (["route-demo", "--nodes", "x"], "argument --nodes"),
    ],
)
def test_bad_numbers_on_the_command_line_exit_2_in_one_line(argv, message, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "locmoe", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- shipped configs by name


def test_configs_lists_the_shipped_configs_with_descriptions():
    out = run("configs")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in (
        "tiny_cpu",
        "pangu_sigma_small",
        "pangu_sigma_1b",
        "ascend_910b",
        "routers/gshard",
        "routers/locmoe",
        "routers/switch",
        "routers/hash",
    ):
        row = next(line for line in lines if line.split()[:1] == [name])
        assert len(row.split(None, 1)[1]) > 20  # a description follows the name
    assert run("configs", "gshard").stdout.startswith("# Router variant: GShard")
    bad = run("configs", "nope")
    assert bad.returncode == 2 and "names no shipped config" in bad.stderr


def test_train_finds_shipped_configs_by_name_from_any_directory(tmp_path, monkeypatch):
    from locmoe.config import load_config

    monkeypatch.chdir(tmp_path)
    by_name = load_config("tiny_cpu", layers=["gshard"])
    by_path = load_config("configs/tiny_cpu.yaml", layers=["configs/routers/gshard.yaml"])
    by_file_name = load_config("tiny_cpu.yaml", layers=["routers/gshard"])
    assert by_name == by_path == by_file_name
    assert by_name.name == "tiny_cpu" and by_name.moe.router.kind == "gshard"


def test_bench_calibrate_on_cpu_uses_cpu_shapes_and_prints_progress(tmp_path):
    """The GPU shapes ran > 10 minutes at 4.7 GB on CPU without a word; the CPU default is small and talks."""
    out = subprocess.run(
        [sys.executable, "-m", "locmoe", "bench", "calibrate", "--out", "p.json", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("calibrate [")]
    assert "E=8 (local 8), d=256, f=512, rows per expert [16, 32, 64, 128], 3 reps" in lines[0]
    assert [f"at {rows} rows each" in line for rows, line in zip((16, 32, 64, 128), lines[1:])] == [True] * 4
    assert (tmp_path / "p.json").stat().st_size > 0
