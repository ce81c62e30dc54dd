"""Empirical check of the capacity lower bound on synthetic GrAP tokens (random and clustered).

For each scenario the router runs ``--steps`` batches from the same distribution (so the angle EMA is
warm) and the last batch is measured: the capacity each rule gives, in units of the mean load k·T/E, the
fraction of token copies it drops, and the drops at 0.9×, 0.75× and 0.5× of it. The smallest uniform
capacity with ≤ 1 % drops (found by scanning the real loads) is the yardstick.

    python scripts/bench/capacity_bound.py [--tokens 8192] [--out bench_results/capacity_bound.json]
"""

from __future__ import annotations

import argparse

import numpy as np

from locmoe.config import load_config
from locmoe.parallel.topology import ExpertPlacement, Topology
from locmoe.report import format_table, write_json
from locmoe.routing import route


def synthetic_tokens(kind: str, T: int, d: int, E: int, rng: np.random.Generator, centers=None) -> np.ndarray:
    """random: isotropic Gaussian. clustered: E Gaussian clusters around fixed random centres."""
    if kind == "random":
        return rng.standard_normal((T, d))
    assert centers is not None, "clustered tokens need their centres"
    return centers[rng.integers(0, len(centers), T)] + 1.5 * rng.standard_normal((T, d))


def dropped_fraction(load: np.ndarray, capacity: np.ndarray) -> float:
    return float(np.maximum(load - capacity, 0).sum() / load.sum())


def min_uniform_capacity(load: np.ndarray, max_drop: float = 0.01) -> int:
    """Smallest capacity C (same for every expert) that drops at most ``max_drop`` of the copies."""
    lo, hi = 1, int(load.max())
    while lo < hi:
        mid = (lo + hi) // 2
        if dropped_fraction(load, np.full_like(load, mid)) <= max_drop:
            hi = mid
        else:
            lo = mid + 1
    return lo


def measure(kind: str, E: int, rule: str, args) -> dict:
    d, k, T = args.d_model, 2, args.tokens
    overrides = [
        f"model.d_model={d}",
        "model.n_heads=8",
        f"moe.num_experts={E}",
        "moe.router.kind=gshard",
        "moe.router.gate=grap",
        f"moe.capacity.mode={'factor' if rule == 'factor' else 'bound'}",
        f"moe.capacity.factor={args.factor}",
    ]
    if rule != "factor":
        overrides.append(f"moe.capacity.bound_rule={rule}")
    moe = load_config(overrides=overrides).moe
    placement = ExpertPlacement.contiguous(E, Topology(1, 1))
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((E, d))
    state = None
    for _ in range(args.steps):
        x = synthetic_tokens(kind, T, d, E, rng, centers)
        res = route(x, moe, placement, np.zeros(T, dtype=np.int64), state=state)
        state = res.state
    load, cap = res.plan.expert_load(), res.capacity
    mean = k * T / E
    row = dict(
        tokens=kind,
        E=E,
        rule=rule if rule != "factor" else f"factor {args.factor}",
        max_load=load.max() / mean,
        capacity=cap.max() / mean,
        total_capacity=cap.sum() / (k * T),
        dropped=dropped_fraction(load, cap),
    )
    for scale in (0.9, 0.75, 0.5):
        row[f"dropped@{scale}x"] = dropped_fraction(load, np.floor(cap * scale))
    best = min_uniform_capacity(load)
    row["min_uniform_cap_1pct"] = best / mean
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--tokens", type=int, default=8192, help="tokens per batch T (default 8192)")
    p.add_argument("--d-model", type=int, default=2048)
    p.add_argument("--steps", type=int, default=4, help="batches before the measured one, for the EMA")
    p.add_argument("--factor", type=float, default=1.25, help="capacity factor to compare with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_results/capacity_bound.json")
    args = p.parse_args()
    rows = [
        measure(kind, E, rule, args)
        for E in (8, 64)
        for kind in ("random", "clustered")
        for rule in ("factor", "cone", "quantile")
    ]
    print(
        f"capacity bound on synthetic GrAP tokens: T={args.tokens}, d={args.d_model}, k=2, top-2 routing; "
        "capacities and loads in units of the mean load k*T/E (total_capacity in units of k*T)"
    )
    print(format_table(rows, floatfmt=".3f"))
    summary = []
    for r in rows:
        if r["rule"].startswith("factor"):
            continue
        f = next(x for x in rows if x["E"] == r["E"] and x["tokens"] == r["tokens"] and x["rule"].startswith("factor"))
        summary.append(
            dict(
                tokens=r["tokens"],
                E=r["E"],
                rule=r["rule"],
                dropped=r["dropped"],
                capacity_vs_factor=r["capacity"] / f["capacity"],
                total_vs_factor=r["total_capacity"] / f["total_capacity"],
                within_1pct=r["dropped"] <= 0.01,
            )
        )
    print("\nbound vs factor %.2f (ratio < 1: the rule needs less room)" % args.factor)
    print(format_table(summary, floatfmt=".3f"))
    path = write_json(args.out, {"args": vars(args), "rows": rows, "summary": summary})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
