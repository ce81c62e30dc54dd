"""``parallel.shard`` on one device: ``locmoe train`` of a job with each mode, tokens/s from its own
metrics.jsonl (the user's loop: logging on, the CUDA-graphed step when it captures), and whether the step was
captured. One rank has nothing to shard, so the model is not wrapped and every mode must run the same step.

    python scripts/bench/shard_one_gpu.py --out docs/results/shard_one_gpu_h100.json [--config pangu_sigma_small]
    python scripts/bench/shard_one_gpu.py --smoke --out /tmp/shard.json      (CPU, tiny: the bench's own check)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = ("none", "optimizer", "full")
QUIET = ["logging.tensorboard=false", "logging.progress=false", "export.at_end=false", "train.eval_every=0"]
SMOKE = ["model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.d_ff=128", "moe.d_expert=64",
         "data.seq_len=32", "model.max_seq_len=32", "train.batch_size=2", "data.max_bytes=50000",
         "train.warmup_steps=2"]  # fmt: skip


def run(config: str, mode: str, steps: int, extra: list[str], where: Path) -> dict:
    out = where / f"run_{mode}"
    sets = [*QUIET, *extra, f"parallel.shard={mode}", f"train.steps={steps}", f"train.ckpt_every={steps}",
            f"train.warmup_steps={max(1, steps // 4)}",
            "logging.log_every=5", f"train.out_dir={out}"]  # fmt: skip
    cmd = [sys.executable, "-m", "locmoe", "train", config, *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: locmoe train failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > steps // 3]
    capture = [line for line in (proc.stdout + proc.stderr).splitlines() if "train.cuda_graph" in line]
    return {
        "mode": mode,
        "tokens_per_s": statistics.median(rates),
        "captured": not capture,
        "capture_note": capture[0] if capture else "",
        "final_lm_loss": rows[-1].get("lm_loss"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--config", default="pangu_sigma_small")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (tiny_cpu, 6 steps)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated parallel.shard modes, none first")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    config, extra, steps = ("tiny_cpu", SMOKE, 6) if args.smoke else (args.config, [], args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(config, mode, steps, extra, Path(tmp)) for mode in args.modes.split(",")]
    base = rows[0]["tokens_per_s"]
    print(f"{'parallel.shard':<16}{'tokens/s':>12}{'vs none':>9}{'captured':>10}{'lm loss':>10}")
    for r in rows:
        r["vs_none"] = r["tokens_per_s"] / base
        print(f"{r['mode']:<16}{r['tokens_per_s']:>12,.0f}{r['vs_none']:>9.3f}{str(r['captured']):>10}"
              f"{r['final_lm_loss']:>10.4f}")  # fmt: skip
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    from router_runs import device_name

    record = {"config": config, "steps": steps, "device": device_name(args.smoke), "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
