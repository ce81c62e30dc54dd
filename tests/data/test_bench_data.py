"""scripts/bench/data.py runs end to end in its smoke mode (10 MB) and writes the rows it promises; its temporary
corpus is removed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_data_bench_smoke(tmp_path):
    out, work = tmp_path / "data.json", tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "scripts/bench/data.py", "--smoke", "--out", str(out), "--work", str(work)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["path"]: r for r in result["rows"]}
    assert list(rows) == [
        "int64 copy (before)",
        "bin_uint16, lazy",
        "indexed + sidecar, lazy",
        "indexed scanned, lazy",
        "bin_uint16, memmap windows",
    ]
    assert all(r["samples_per_s"] > 0 for r in rows.values() if r["measured"])
    # 10 MB of uint16 = 40 MB as int64 for the old path; the lazy paths hold a few windows
    assert result["meets_goal"] and "goal: every lazy path < 200 MB" in proc.stdout
    assert list(work.iterdir()) == []
