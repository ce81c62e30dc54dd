"""Placement benchmark: ExFlow cross-device hops vs round-robin, and GRACE replication's load balance.

On a routing trace (recorded from a checkpoint: ``--trace``; or a synthetic one with planted affinity:
``--synthetic``), for ``--devices`` devices:
- expected cross-device hops per token per layer transition for round-robin, contiguous, greedy and ExFlow
  (ILP when small enough, else greedy), ExFlow ÷ round-robin (goal ≤ 0.4), solver time;
- on the most skewed layer of the ExFlow placement, max/mean device load before and after replication
  with ``--slots`` extra expert slots per device and locality-aware replica routing (goal ≤ 1.10).

    python scripts/bench/placement.py --trace trace.npz --devices 8
    python scripts/bench/placement.py --synthetic --devices 8 [--experts 64 --layers 8 --tokens 40000]
"""

from __future__ import annotations

import argparse
import time

from locmoe.placement.compare import compare_placements
from locmoe.placement.grace import plan_grace
from locmoe.placement.synthetic import planted_trace
from locmoe.placement.trace import expected_fingerprint, load_trace
from locmoe.report import format_table, write_json

HOPS_GOAL, BALANCE_GOAL = 0.4, 1.10


def get_trace(args):
    if args.synthetic:
        return planted_trace(
            args.tokens, args.experts, args.top_k, args.layers, args.groups, args.strength, args.skew, args.seed
        )
    if not args.trace:
        raise SystemExit("give --trace PATH (a recorded trace) or --synthetic")
    trace = load_trace(args.trace, expect=expected_fingerprint(args.expect))
    return trace.head(args.max_tokens) if args.max_tokens else trace


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--trace", default="", help="routing trace .npz recorded from a checkpoint")
    p.add_argument("--expect", default="", help="router export dir / manifest.json / JSON fingerprint to check")
    p.add_argument("--max-tokens", type=int, default=0, help="use the first N tokens of the trace (0 = all)")
    p.add_argument("--synthetic", action="store_true", help="generate a trace with planted inter-layer affinity")
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tokens", type=int, default=40000)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--groups", type=int, default=8, help="synthetic: topics planting the affinity")
    p.add_argument("--strength", type=float, default=0.85, help="synthetic: affinity strength in [0, 1]")
    p.add_argument("--skew", type=float, default=0.5, help="synthetic: popularity skew (0 = uniform)")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--devices-per-node", type=int, default=0)
    p.add_argument("--method", default="auto", choices=["auto", "ilp", "greedy", "brute_force"])
    p.add_argument("--time-limit", type=float, default=60.0, help="ILP time limit (s)")
    p.add_argument("--slots", type=int, default=2, help="extra expert slots per device for replicas")
    p.add_argument("--threshold", type=float, default=1.05, help="replica routing balance threshold")
    p.add_argument("--token-placement", default="home", choices=["home", "previous"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_results/placement.json")
    args = p.parse_args()
    start = time.perf_counter()
    trace = get_trace(args)
    print(
        f"trace: {'synthetic ' + str(trace.source.get('synthetic')) if args.synthetic else args.trace}; "
        f"{trace.num_tokens} tokens, {trace.num_layers} MoE layers, E={trace.num_experts}, k={trace.top_k}"
    )
    rows, plan = compare_placements(
        trace, args.devices, args.devices_per_node or None, args.method, args.time_limit, seed=args.seed
    )
    print(f"\nexpected cross-device hops per token per layer transition, {args.devices} devices")
    print(format_table(rows, floatfmt=".4f"))
    grace = plan_grace(
        trace,
        args.devices,
        args.slots,
        args.threshold,
        token_placement=args.token_placement,
        base=plan.assignment,
        seed=args.seed,
    )
    print(
        f"\nreplication on the ExFlow placement: {args.slots} extra slots/device, threshold {args.threshold}, "
        f"tokens at their {args.token_placement} device"
    )
    print(format_table(grace.stats, floatfmt=".3f"))
    skewed = grace.most_skewed()
    ratio = rows[-1]["hops_vs_round_robin"]
    summary = [
        {"metric": "hops exflow / round_robin", "value": ratio, "goal": f"<= {HOPS_GOAL}", "met": ratio <= HOPS_GOAL},
        {
            "metric": f"max/mean load before replication (layer {skewed['layer']})",
            "value": skewed["max_mean_before"],
            "goal": "",
            "met": "",
        },
        {
            "metric": f"max/mean load after replication (layer {skewed['layer']})",
            "value": skewed["max_mean_after"],
            "goal": f"<= {BALANCE_GOAL}",
            "met": skewed["max_mean_after"] <= BALANCE_GOAL,
        },
        {
            "metric": f"solver seconds ({plan.method}, {plan.status})",
            "value": plan.solve_seconds,
            "goal": "",
            "met": "",
        },
        {"metric": "benchmark seconds", "value": time.perf_counter() - start, "goal": "", "met": ""},
    ]
    print("\nsummary")
    print(format_table(summary, floatfmt=".3f"))
    settings = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))}
    path = write_json(
        args.out,
        {
            "args": settings,
            "trace_source": trace.source,
            "fingerprint": trace.fingerprint,
            "placements": rows,
            "replication": grace.stats,
            "summary": summary,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
