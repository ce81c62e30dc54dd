"""LocMoE against GShard top-2 and Switch top-1 in real pretraining: same model, data and steps, each router
trained by ``locmoe train`` under torchrun with 2 GPUs as 2 nodes (1 device per node), so every copy that
leaves its rank crosses a "node". One table, one JSON.

    python scripts/bench/router_compare.py --data tinyshakespeare.txt [--steps 400] [--nproc 2]
    python scripts/bench/router_compare.py --data tinyshakespeare.txt --nproc 1    # one GPU emulating 2 nodes
    python scripts/bench/router_compare.py --data tinyshakespeare.txt --smoke      # CPU, tiny, for CI-style checks

Columns: final validation loss, median step time (training only, logged steps after warm-up), fraction of
token copies that crossed nodes, fraction dropped by capacity, and the busiest expert's load relative to the
mean (tokens per expert). Goals of the issue: LocMoE's validation loss within 1 % of GShard's, its cross-node
copies <= 35 % of GShard's, its step time <= 0.80x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from locmoe.report import format_table, write_json  # noqa: E402

# The comparison model: big enough that the MoE layers are most of a step on an H200, small enough that three
# runs fit in a few minutes. Byte-level tokens of the 1.1 MB corpus.
GPU_MODEL = ["model.d_model=512", "model.n_layers=8", "model.n_heads=8", "model.d_ff=1408", "model.dense_layers=2",
             "model.moe_every=1", "model.max_seq_len=512", "moe.num_experts=16", "moe.d_expert=1024",
             "data.seq_len=512", "train.batch_size=32",
             "train.lr=1e-3", "train.min_lr=1e-4"]
SMOKE_MODEL = ["model.d_model=64", "model.n_layers=3", "model.n_heads=4", "model.d_ff=128", "model.dense_layers=1",
               "model.max_seq_len=64", "moe.num_experts=8", "moe.d_expert=64", "data.seq_len=64",
               "train.batch_size=4", "parallel.device=cpu", "data.max_bytes=100000"]


def run_router(entry: str, args, out: Path) -> dict:
    """``entry`` is a router variant name, optionally with overrides: ``locmoe@moe.router.rho=0.9@...``."""
    router, *extra = entry.split("@")
    steps = args.steps
    model = SMOKE_MODEL if args.smoke else GPU_MODEL if args.job == "tiny_cpu" else []   # a shipped job keeps its sizes
    sets = [*model, *(["parallel.device=cuda"] if not args.smoke else []), f"train.steps={steps}",
            f"train.dtype={args.dtype}",
            f"train.warmup_steps={max(steps // 10, 1)}", f"train.eval_every={max(steps // 3, 1)}",
            "train.eval_batches=16", "train.ckpt_every=0", "logging.log_every=10", "logging.progress=false",
            "logging.heatmap_every=0", "logging.tensorboard=false", "export.at_end=false", f"train.out_dir={out}",
            f"data.sources=[{{path: {Path(args.data).resolve()}}}]", "data.val_fraction=0.1",
            "parallel.nodes=2", f"parallel.devices_per_node={max(args.nproc // 2, 1)}", *extra]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
                "-m", "locmoe"] if args.nproc > 1 else [sys.executable, "-m", "locmoe"]
    cmd = [*launcher, "train", str(ROOT / "configs" / f"{args.job}.yaml"),
           "--with", str(ROOT / "configs" / "routers" / f"{router}.yaml"), *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{router}: training failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    from locmoe.config import load_config

    cfg = load_config(ROOT / "configs" / f"{args.job}.yaml", sets,
                      layers=[ROOT / "configs" / "routers" / f"{router}.yaml"])
    ranks = 2 * max(args.nproc // 2, 1)             # emulated ranks when one process plays both nodes
    tokens = cfg.train.batch_size * ranks * cfg.data.seq_len
    mean_load = cfg.moe.router.top_k * tokens / cfg.moe.num_experts   # copies per expert if balanced
    return summarise(entry, out / "metrics.jsonl", steps, mean_load)


def summarise(router: str, metrics: Path, steps: int, mean_load: float) -> dict:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "step_time_s" in r and r["step"] > steps // 5]   # after warm-up and compilation
    val = [r for r in rows if "val_loss" in r]
    mean = lambda key: statistics.fmean(r[key] for r in train)  # noqa: E731
    return {"router": router, "val_loss": val[-1]["val_loss"], "step_ms": 1e3 * statistics.median(
                r["step_time_s"] for r in train),
            "cross_node_fraction": mean("cross_node_fraction"), "dropped_fraction": mean("dropped_fraction"),
            "max_load_over_mean": mean("max_expert_load") / mean_load, "tokens_per_s": mean("tokens_per_s")}


def compare(rows: list[dict]) -> dict:
    by = {r["router"]: r for r in rows}
    if "locmoe" not in by or "gshard" not in by:
        return {}
    lm, gs = by["locmoe"], by["gshard"]
    return {"val_loss_vs_gshard": lm["val_loss"] / gs["val_loss"] - 1,
            "cross_node_vs_gshard": lm["cross_node_fraction"] / max(gs["cross_node_fraction"], 1e-12),
            "step_time_vs_gshard": lm["step_ms"] / gs["step_ms"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training text (e.g. tinyshakespeare.txt)")
    p.add_argument("--steps", type=int, default=150,
                   help="150: on tinyshakespeare the GPU model starts to overfit after ~150 steps")
    p.add_argument("--nproc", type=int, default=2, help="processes = GPUs, half per node; 1 = one process emulates "
                   "both nodes (routing, traffic and loss are the 2-node ones; no all-to-all is timed)")
    p.add_argument("--routers", default="locmoe,gshard,switch", help="comma-separated configs/routers/ names, each "
                   "optionally with overrides: locmoe@moe.router.rho=0.9@moe.capacity.mode=factor")
    p.add_argument("--job", default="tiny_cpu", help="configs/JOB.yaml; tiny_cpu gets the comparison model's sizes, "
                   "any other job (e.g. pangu_sigma_1b) keeps its own")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--smoke", action="store_true", help="tiny CPU model (gloo) to check the script")
    p.add_argument("--work", default="bench_results/router_compare_runs")
    p.add_argument("--out", default="bench_results/router_compare.json")
    args = p.parse_args()
    if args.nproc != 1 and args.nproc % 2:
        raise SystemExit("--nproc must be 1 (one process emulating 2 nodes) or even (half the processes per node)")
    rows = []
    for router in args.routers.split(","):
        out = Path(args.work) / router.replace("@", "_").replace("=", "-")
        if out.exists():
            import shutil

            shutil.rmtree(out)   # our own scratch runs: a fresh comparison each time
        rows.append(run_router(router, args, out))
        print(f"{router}: done", flush=True)
    print(format_table(rows))
    goals = compare(rows)
    if goals:
        print("LocMoE vs GShard: val loss {val_loss_vs_gshard:+.2%} (goal within 1%), cross-node copies "
              "{cross_node_vs_gshard:.2f}x (goal <= 0.35), step time {step_time_vs_gshard:.2f}x (goal <= 0.80)"
              .format(**goals))
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
    payload = {"device": device, "nproc": args.nproc, "steps": args.steps, "rows": rows, "vs_gshard": goals}
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
