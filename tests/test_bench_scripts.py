"""The GPU benchmark scripts run end to end in their CPU smoke modes, so they cannot rot between GPU visits.
Nothing here looks at a timing: only that each script finishes and writes the rows it promises."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd, nproc=0):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc else [sys.executable]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([*launcher, *map(str, cmd)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_moe_layer_multi_process_part(tmp_path):
    out = tmp_path / "multi.json"
    run("scripts/bench/moe_layer.py", "--part", "multi", "--smoke", "--nodes", "2", "--tokens", "128", "--reps", "1",
        "--part-out", out, nproc=4)
    whats = [r["what"] for r in json.loads(out.read_text())]
    assert whats[0].startswith("raw all_to_all_single")
    assert {"flat scheme dispatch", "hierarchical scheme dispatch", "MoE layer fwd+bwd, overlap_chunks=4"} <= set(whats)


def test_router_compare(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(Path(ROOT / "README.md").read_text() * 20)
    out = tmp_path / "rc.json"
    run("scripts/bench/router_compare.py", "--smoke", "--nproc", "1", "--steps", "4", "--routers", "locmoe,gshard",
        "--data", text, "--work", tmp_path / "runs", "--out", out)
    result = json.loads(out.read_text())
    assert [r["router"] for r in result["rows"]] == ["locmoe", "gshard"]
    assert set(result["vs_gshard"]) == {"val_loss_vs_gshard", "cross_node_vs_gshard", "step_time_vs_gshard"}


def test_prefill(tmp_path):
    out = tmp_path / "prefill.json"
    run("scripts/bench/prefill.py", "--smoke", "--out", out, nproc=2)
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["rows"] and result["layers"]
