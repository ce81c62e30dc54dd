"""Heterogeneous serving and cluster-scale benchmark (simulated; profiles say where their numbers come from).

1. Two device kinds (default: ``h200`` measured on 2×H200, ``a100-40gb`` stated from its spec
   sheet; see ``locmoe/planning/profiles.py``), an MoE model and a stream of requests of mixed lengths:
   output tokens/s of the planner's deployment + earliest-completion scheduler ÷ a naive uniform
   deployment + round-robin (goal ≥ 1.4), from the discrete-event simulator.
2. The cluster simulator's projected training step time of LocMoE vs GShard (and Switch) at 16 × 8.

    python scripts/bench/hetero.py [--budget h200=8,a100-40gb=16] [--requests 1500] [--profile P.json]
"""

from __future__ import annotations

import argparse
import time

from locmoe.planning.cluster_sim import Calibration, MoEModel
from locmoe.planning.compare_deploy import compare_deployments
from locmoe.planning.profiles import load_profiles, parse_budget
from locmoe.planning.router_stats import project_routers
from locmoe.report import format_table, write_json

SPEEDUP_GOAL = 1.4


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--profile", default=None, help="JSON profile (device_kinds, model, workload)")
    p.add_argument("--budget", default="h200=8,a100-40gb=16", help="devices per kind")
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument(
        "--saturate",
        type=float,
        default=1.5,
        help="Poisson arrivals at this multiple of the planner's modelled request rate (0 = every request at t=0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration", default=None, help="JSON calibration for the cluster simulator")
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--devices-per-node", type=int, default=8)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--out", default="bench_results/hetero.json")
    args = p.parse_args()
    start = time.perf_counter()
    kinds, model, _ = load_profiles(args.profile)
    print(
        "device kinds: "
        + "; ".join(
            f"{k.name}: {k.tflops:.0f} TFLOP/s, {k.hbm_tbps:.2f} TB/s, {k.mem_gb:g} GB, "
            f"link {k.link_gbps:.0f} GB/s ({k.source})"
            for k in kinds.values()
        )
    )
    print(f"model: {model}")
    deploy = compare_deployments(
        kinds, model, parse_budget(args.budget), args.requests, seed=args.seed, saturate=args.saturate
    )
    for title, rows in deploy["tables"].items():
        print(f"\n{title}")
        print(format_table(rows, floatfmt=".3f"))
    cal = Calibration.from_json(args.calibration) if args.calibration else Calibration()
    sim_model = MoEModel(num_experts=args.experts)
    cluster = project_routers(sim_model, cal, args.nodes, args.devices_per_node, seed=args.seed)
    print(
        f"\nprojected training step at {args.nodes} x {args.devices_per_node}: {sim_model}; routing statistics of "
        f"the reference routers on one random batch; calibration: {cal.source}"
    )
    print(format_table(cluster, floatfmt=".3f"))
    loc = next(r for r in cluster if r["system"] == "locmoe")
    summary = [
        {
            "metric": "planner+earliest-completion / naive+round-robin (output tok/s)",
            "value": deploy["speedup"],
            "goal": f">= {SPEEDUP_GOAL}",
            "met": deploy["speedup"] >= SPEEDUP_GOAL,
        },
        {
            "metric": f"LocMoE / GShard step time at {args.nodes}x{args.devices_per_node}",
            "value": loc["vs_gshard"],
            "goal": "< 1",
            "met": loc["vs_gshard"] < 1,
        },
        {"metric": "benchmark seconds", "value": time.perf_counter() - start, "goal": "", "met": ""},
    ]
    print("\nsummary")
    print(format_table(summary, floatfmt=".3f"))
    settings = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str)) or v is None}
    path = write_json(
        args.out,
        {"args": settings, "deploy": deploy, "cluster": cluster, "calibration": cal.to_dict(), "summary": summary},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
