"""scripts/bench/decode.py (a GPU benchmark) runs end to end in its CPU smoke mode and writes the rows and
goals it promises, for our KV-cache path and for transformers' generate on the exported weights. Nothing
here looks at a timing."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_decode_bench_smoke(tmp_path):
    out = tmp_path / "decode.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "scripts/bench/decode.py", "--smoke", "--work", str(tmp_path / "w"), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {(r["system"], r["batch"], r["new"]) for r in rows} == {
        (s, b, n) for s in ("ours", "transformers") for b in (1, 3) for n in (4, 8)
    }
    assert all(r["tokens_per_s"] > 0 and "error" not in r for r in rows)
    assert {"batch1_speedup_vs_transformers", "batch3_speedup_vs_transformers", "startup_s"} <= set(result["goals"])
    assert result["batch1_greedy_tokens_agreeing"] == 8  # fp32: the same weights pick the same tokens
