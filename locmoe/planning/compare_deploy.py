"""Planner vs naive deployment, each under both schedulers, on one simulated request stream (shared by
``locmoe plan deploy`` and ``scripts/bench/hetero.py``)."""

from __future__ import annotations

import time

from locmoe.planning.event_sim import mixed_requests, simulate, workload_of
from locmoe.planning.hetero import Deployment, InstanceModel, ModelSpec, naive_deployment, plan_deployment
from locmoe.planning.scheduler import EarliestCompletionScheduler, RoundRobinScheduler


def deployment_rows(name: str, dep: Deployment, kinds: dict, model: ModelSpec, w) -> list[dict]:
    rows = []
    for cfg, n in dep.instances:
        m = InstanceModel(kinds[cfg.kind], model, cfg)
        rows.append(
            {
                "deployment": name,
                "kind": cfg.kind,
                "instances": n,
                "devices_each": cfg.devices,
                "tp": cfg.tp,
                "ep": cfg.ep,
                "batch": cfg.batch,
                "kv_tokens": m.kv_token_capacity(),
                "model_tok_per_s_each": m.throughput(w),
            }
        )
    return rows


def compare_deployments(
    kinds: dict,
    model: ModelSpec,
    budget: dict,
    num_requests: int = 1500,
    rate_per_s: float | None = None,
    seed: int = 0,
    saturate: float = 0.0,
) -> dict:
    """Tables (deployments, simulations) and the ratio planner+earliest-completion ÷ naive+round-robin.

    ``saturate`` > 0 sets Poisson arrivals at that multiple of the planner's modelled request rate
    (overrides ``rate_per_s``); otherwise ``rate_per_s`` (None = every request at t = 0)."""
    probe = mixed_requests(num_requests, seed)
    w = workload_of(probe)
    planned = plan_deployment(kinds, model, w, budget)
    naive = naive_deployment(kinds, model, w, budget)
    if saturate > 0:
        rate_per_s = saturate * planned.throughput / w.mean_output
    requests = mixed_requests(num_requests, seed, rate_per_s)
    sims, results = [], {}
    for dep_name, dep in (("planner", planned), ("naive", naive)):
        models = [InstanceModel(kinds[c.kind], model, c) for c in dep.expand()]
        for sched in (EarliestCompletionScheduler(), RoundRobinScheduler()):
            start = time.perf_counter()
            res = simulate(models, requests, sched)
            results[(dep_name, sched.name)] = res
            sims.append(
                {
                    "deployment": dep_name,
                    **res.as_row(),
                    "sim_seconds": time.perf_counter() - start,
                    "max_running_share": max(r / i.config.batch for r, i in zip(res.max_running, models)),
                    "max_kv_share": max(res.max_kv_share),
                }
            )
    best, base = results[("planner", "earliest-completion")], results[("naive", "round-robin")]
    deploy_title = (
        f"deployments for budget {budget} (workload: mean prompt {w.mean_prompt:.0f}, mean output "
        f"{w.mean_output:.0f}, max context {w.max_context})"
    )
    arrivals = "all at t=0" if rate_per_s is None else f"Poisson {rate_per_s:.1f}/s"
    sim_title = f"simulated stream: {num_requests} requests, {arrivals}, seed {seed}"
    deployments = [
        *deployment_rows("planner", planned, kinds, model, w),
        *deployment_rows("naive", naive, kinds, model, w),
    ]
    return {
        "tables": {deploy_title: deployments, sim_title: sims},
        "rate_per_s": rate_per_s,
        "speedup": best.output_tokens_per_s / base.output_tokens_per_s,
        "kinds": {k: v.source for k, v in kinds.items()},
        "model": model.name,
    }
