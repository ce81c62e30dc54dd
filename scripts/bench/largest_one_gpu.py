"""The largest pangu_sigma-shaped model that trains on one GPU at sequence length 2048, measured: the memory
plan's largest family member for 1 device (``locmoe plan memory pangu_sigma_1b --devices 1 --seq-len 2048``)
is written out as a job and trained for a few steps by ``memory_plan_check.py --device cuda`` (its peak memory
against the plan), with activation checkpointing as the plan chose.

    python scripts/bench/largest_one_gpu.py --gpu-gib 80 --out docs/results/largest_one_gpu_h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from locmoe.config import dump_config, load_config  # noqa: E402
from locmoe.planning.model_family import largest_member, largest_per_rung, member  # noqa: E402


def planned(gpu_gib: float, seq_len: int):
    base = load_config("pangu_sigma_1b", [f"data.seq_len={seq_len}", f"model.max_seq_len={max(seq_len, 2048)}"])
    fit = largest_member(largest_per_rung(base, devices=1, budget=int(gpu_gib * 2**30)))
    if fit is None:
        raise SystemExit("no pangu_sigma-shaped model fits one device of this size")
    cfg = member(base, fit.d_model, fit.n_layers, fit.num_experts, fit.expert_parallel)
    train = dataclasses.replace(cfg.train, activation_checkpointing=fit.checkpointing)
    return dataclasses.replace(cfg, train=train), fit


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--gpu-gib", type=float, default=80)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg, fit = planned(args.gpu_gib, args.seq_len)
    print(f"planned largest: {fit.row()}")
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "largest.yaml"
        job.write_text(dump_config(cfg))
        ac = "on" if fit.checkpointing else "off"
        cmd = [sys.executable, str(ROOT / "scripts" / "bench" / "memory_plan_check.py"), "--device", "cuda",
               "--configs", str(job), "--checkpointing", ac, "--steps", str(args.steps), "--out", args.out]  # fmt: skip
        raise SystemExit(subprocess.run(cmd, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
