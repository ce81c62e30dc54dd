"""KV-cache decoding with the experts over 2 gloo processes (2 nodes x 1: the locality rule is live and
every MoE call is collective) equals the no-cache forward: tolerance 1e-5 as in test_kv_cache.py."""

import json
import os
import sys
from pathlib import Path

from tests import machine_share

ROOT = Path(__file__).resolve().parents[2]


def test_kv_cache_over_an_expert_parallel_group(tiny, export2, tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests/inference/dist_kv_worker.py"),
        str(tiny),
        str(export2),
        str(out),
    ]
    proc = machine_share.run_alone(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and r["max_err"] <= 1e-5 and r["same_tokens"], r
