"""``locmoe plan memory``: the table of each shard mode, the largest model that fits, one-line refusals (exit 2)
naming the flag, and ``--json`` that never overwrites a file it did not write."""

import json
import subprocess
import sys


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "locmoe", "plan", "memory", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_prints_every_shard_mode_and_the_largest_model(tmp_path):
    out = run("pangu_sigma_1b", "--devices", 8, "--gpu-gib", 80, "--json", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("shard"))
    for column in ("parameters", "gradients", "optimizer", "activations", "all to all", "peak", "needs", "fits"):
        assert column in header
    rows = [line.split() for line in lines if line.split()[:1] in (["none"], ["optimizer"], ["full"])]
    assert [(r[0], r[1]) for r in rows] == [(s, a) for s in ("none", "optimizer", "full") for a in ("off", "on")]
    assert any(line.startswith("largest pangu_sigma-shaped model that fits 8 x 80 GiB (planned)") for line in lines)
    payload = json.loads((tmp_path / "m.json").read_text())
    assert payload["written_by"] == "locmoe plan memory" and payload["layout"] == {"world": 8, "ep": 8, "expert_dp": 1}
    assert len(payload["rows"]) == 6 and payload["largest"]["d_model"] >= 2048
    again = run("pangu_sigma_1b", "--devices", 8, "--gpu-gib", 80, "--shard", "full", "--json", tmp_path / "m.json")
    assert again.returncode == 0, again.stderr  # its own previous output may be replaced
    assert [r["shard"] for r in json.loads((tmp_path / "m.json").read_text())["rows"]] == ["full", "full"]


def test_json_refuses_a_file_it_did_not_write(tmp_path):
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": true}\n')
    out = run("pangu_sigma_small", "--devices", 1, "--gpu-gib", 80, "--json", foreign)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "refusing to overwrite" in out.stderr and out.stdout == ""
    assert foreign.read_text() == '{"mine": true}\n'


def test_bad_flags_exit_2_naming_the_flag():
    for args, flag in (
        (["--devices", 8, "--gpu-gib", 80, "--shard", "zero3"], "--shard"),
        (["--devices", 0, "--gpu-gib", 80], "--devices"),
        (["--devices", 8, "--gpu-gib", -1], "--gpu-gib"),
        (["--devices", 8, "--gpu-gib", 80, "--seq-len", 1], "--seq-len"),
    ):
        out = run("pangu_sigma_1b", *args)
        assert out.returncode == 2, args
        assert len(out.stderr.strip().splitlines()) == 1 and f"argument {flag}" in out.stderr, out.stderr
    out = run("pangu_sigma_1b", "--devices", 8, "--gpu-gib", 80, "--shard", "zero3")
    assert "'none', 'optimizer', 'full'" in out.stderr


def test_a_layout_that_cannot_exist_is_one_line():
    out = run("pangu_sigma_1b", "--devices", 64, "--gpu-gib", 80)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "parallel.expert_parallel_size=16" in out.stderr
    out = run("pangu_sigma_1b", "--devices", 64, "--gpu-gib", 80, "--set", "parallel.expert_parallel_size=16")
    assert out.returncode == 0, out.stderr
