"""``locmoe route-demo``: route one random batch on an emulated cluster with each router and compare
where the token copies go (on the rank, in the node, across nodes) and how many are dropped."""

from __future__ import annotations

import argparse

import numpy as np

from locmoe.config import load_config
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.report import format_table, write_json
from locmoe.routing import route

ROUTERS = ("locmoe", "gshard", "switch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=2, help="emulated nodes (default 2)")
    p.add_argument("--devices-per-node", type=int, default=4, help="ranks per node (default 4)")
    p.add_argument("--experts", type=int, default=16, help="experts E (default 16)")
    p.add_argument("--d-model", type=int, default=256, help="hidden size d (default 256)")
    p.add_argument("--tokens-per-rank", type=int, default=512, help="tokens on each rank (default 512)")
    p.add_argument("--rho", type=float, default=0.5, help="LocMoE intra-node-first threshold (default 0.5)")
    p.add_argument("--capacity-factor", type=float, default=1.25, help="capacity factor (default 1.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch and gate (default 0)")
    p.add_argument("--json", default="", help="also write the table to this JSON file")


def run(args: argparse.Namespace) -> list[dict]:
    topo = Topology(args.nodes, args.devices_per_node)
    placement = ExpertPlacement.contiguous(args.experts, topo)
    rng = np.random.default_rng(args.seed)
    T = args.tokens_per_rank * topo.world_size
    x = rng.standard_normal((T, args.d_model))
    gate = rng.standard_normal((args.d_model, args.experts)) / np.sqrt(args.d_model)
    token_rank = np.repeat(np.arange(topo.world_size), args.tokens_per_rank)
    rows = []
    for kind in ROUTERS:
        moe = load_config(
            overrides=[
                f"model.d_model={args.d_model}",
                f"moe.num_experts={args.experts}",
                f"moe.router.kind={kind}",
                f"moe.router.rho={args.rho}",
                f"moe.capacity.factor={args.capacity_factor}",
            ]
        ).moe
        res = route(x, moe, placement, token_rank, gate_weight=gate)
        frac = res.plan.locality_fractions()
        cross = res.plan.traffic(args.d_model * 2, "hierarchical")["cross_node"].sum()
        rows.append(
            dict(
                router=kind,
                gate=moe.router.gate,
                k=moe.router.top_k,
                on_rank=frac["on_rank"],
                in_node=frac["in_node"],
                cross_node=frac["cross_node"],
                dropped=res.plan.dropped() / len(res.plan.kept),
                cross_node_MB=cross / 1e6,
            )
        )
    print(
        f"route-demo: {args.nodes} nodes x {args.devices_per_node} devices, E={args.experts}, "
        f"d={args.d_model}, {args.tokens_per_rank} tokens/rank, rho={args.rho}, capacity factor "
        f"{args.capacity_factor} (fractions of token copies; bytes at bf16)"
    )
    print(format_table(rows, floatfmt=".3f"))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str))}
        write_json(args.json, {"args": settings, "rows": rows})
    return rows


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
