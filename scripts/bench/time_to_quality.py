"""Time to quality: each router's validation-loss curve against *modeled* wall-clock time on a target cluster,
from each run's own measured routing statistics, over seeds, corpora and emulated node counts.

    python scripts/bench/time_to_quality.py --data stdlib --data shakespeare.txt --nodes 2 --nodes 4 --seeds 3
    python scripts/bench/time_to_quality.py --analyse bench_results/ttq_runs      # re-read finished runs
    python scripts/bench/time_to_quality.py --smoke                              # CPU, tiny: the CI check

Each run is ``locmoe train`` of the router-comparison model (``router_compare.GPU_MODEL``: 16 experts,
d 256, 32 sequences of 256 tokens a step) in one process emulating ``nodes`` × (16 / nodes) ranks, one
expert per rank, validated every ``--eval-every`` steps. Its ``metrics.jsonl`` gives, every 10 steps, the
shares of on-rank / in-node / cross-node copies, drops and the busiest expert; ``locmoe.planning.step_model``
turns each interval's statistics into the modeled step of ``pangu_sigma_1b`` on the target (2 × 8 H100 and
2 × 8 Ascend 910B for 2-node runs, 4 × 4 of the same devices for 4-node runs: one expert per device, as in
the run), every part of the step included. LocMoE rows use the hierarchical all-to-all, the others the flat
one, as their authors run them. Time to quality = the modeled time at which a run's validation loss first
reaches GShard's final validation loss (mean over seeds; linear between evaluations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import router_runs as rr  # noqa: E402
from router_compare import GPU_MODEL, SMOKE_MODEL  # noqa: E402

from locmoe.report import write_json  # noqa: E402

RANKS = 16  # emulated ranks of every run: one expert each
ROUTERS = [
    ("gshard", "GShard top-2 (factor 1.25)"),
    ("locmoe", "LocMoE shipped (rho 0.9, embedding placement)"),
    ("locmoe@data.placement=affinity", "LocMoE, affinity placement"),
    ("locmoe@data.placement=drawn@moe.router.rho=0.5", "LocMoE before 2026-12-07 (rho 0.5, no placement)"),
    ("node_limited", "node-limited M=1"),
    ("aux_free@moe.capacity.mode=dropless", "aux-loss-free, dropless (as DeepSeek-V3 trains)"),
]
TTQ_MODEL = [s for s in GPU_MODEL if not s.startswith(("train.batch_size", "data.max_bytes"))] + [
    f"train.batch_size={32 // RANKS}",
    "data.max_bytes=0",
]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", help="a corpus: a text file or 'stdlib' (repeat; default stdlib)")
    p.add_argument("--nodes", action="append", type=int, help="emulated nodes (repeat; default 2 and 4)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per router (default 3; smoke 1)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 1500; smoke 6)")
    p.add_argument("--eval-every", type=int, default=None, help="validation cadence (default 100; smoke 3)")
    p.add_argument("--routers", default=None, help="comma-separated router entries (router_compare's syntax)")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default 12 on a GPU, 2 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU model: checks the script")
    p.add_argument("--analyse", default=None, help="only read the finished runs under this --work folder")
    p.add_argument("--device", default=None, help="the device the runs ran on, for --analyse (default: this one's)")
    p.add_argument("--work", default="bench_results/ttq_runs")
    p.add_argument("--out", default="bench_results/time_to_quality.json")
    args = p.parse_args()
    args.data = args.data or [rr.STDLIB]
    args.work = args.analyse or args.work
    args.nodes = args.nodes or ([2] if args.smoke else [2, 4])
    if any(n < 2 or RANKS % n for n in args.nodes):
        raise SystemExit(f"--nodes: each must divide {RANKS} and be >= 2, got {args.nodes}")
    args.seeds = args.seeds or (1 if args.smoke else 3)
    args.steps = args.steps or (6 if args.smoke else 1500)
    args.eval_every = args.eval_every or (3 if args.smoke else 100)
    args.jobs = args.jobs or (2 if args.smoke else 12)
    entries = args.routers or (
        "gshard,locmoe@data.placement=affinity" if args.smoke else ",".join(e for e, _ in ROUTERS)
    )
    args.routers = entries.split(",")
    return args


def model_sets(smoke: bool) -> list:
    """The model's --set overrides: the comparison model, or the tiny smoke one with one expert per rank."""
    if not smoke:
        return TTQ_MODEL
    kept = [s for s in SMOKE_MODEL if not s.startswith(("train.batch_size", "moe.num_experts"))]
    return kept + ["train.batch_size=2", f"moe.num_experts={RANKS}"]


def grid(args) -> list:
    """Every (corpus, nodes, router, seed) run, its folder under --work and its --set overrides."""
    model = model_sets(args.smoke)
    runs = []
    for corpus in args.data:
        for nodes in args.nodes:
            for entry in args.routers:
                for seed in range(args.seeds):
                    name = rr.Run(entry, corpus, seed, Path()).corpus_name
                    out = Path(args.work) / name / f"{nodes}n" / entry.replace("@", "_").replace("=", "-") / f"s{seed}"
                    run = rr.Run(entry, corpus, seed, out)
                    device = "cpu" if args.smoke else "cuda"
                    dtype = "float32" if args.smoke else "bfloat16"
                    run.sets = rr.run_sets(
                        run, model, args.steps, dtype, 1, nodes, device, RANKS // nodes, args.eval_every
                    )
                    run.nodes = nodes  # pyright: ignore[reportAttributeAccessIssue]  # this script's own tag
                    runs.append(run)
    return runs


def main() -> None:
    args = parse()
    start = time.perf_counter()
    runs = grid(args)
    if args.analyse is None:
        for r in runs:
            rr.fresh(r.out)
        rr.run_all(
            [(f"{r.corpus_name}/{r.nodes}n/{r.entry}/s{r.seed}", r.command("tiny_cpu", 1), r.log) for r in runs],
            args.jobs,
        )
    from ttq_analysis import analyse, plot, tables

    result = analyse(runs, args.steps)
    print(tables(result))
    pngs = plot(result, Path(args.out).with_suffix(".png"))
    device = args.device or rr.device_name(args.smoke)
    payload = {
        "device": device,
        "wall_s": time.perf_counter() - start,
        "steps": args.steps,
        "seeds": args.seeds,
        "eval_every": args.eval_every,
        "model": model_sets(args.smoke),
        **result,
    }
    print(f"wrote {write_json(args.out, payload)} and {', '.join(map(str, pngs))}")


if __name__ == "__main__":
    main()
