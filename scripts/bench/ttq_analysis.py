"""What ``time_to_quality.py`` reads from finished runs: each run's validation curve and, per logged interval,
its routing statistics turned into modeled step time on each target; per (corpus, nodes, router) the mean over
seeds of the final loss, the traffic, and the steps and modeled time to GShard's final validation loss."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np

from locmoe.checkpoint.directory import list_checkpoints, load_state
from locmoe.config import config_from_dict, load_config
from locmoe.planning.cluster_sim import RoutingStats
from locmoe.planning.step_model import TARGETS, TargetModel, step_time, with_topology
from locmoe.report import format_table

ROOT = Path(__file__).resolve().parents[2]
TARGET_JOB = ROOT / "configs" / "pangu_sigma_1b.yaml"


# where locality pays: the H100 target with one NIC per GPU of each of these speeds (Gb/s)
NIC_SWEEP_GBIT = (400, 200, 100, 50)


def with_nic(target, gbit: float):
    return dataclasses.replace(target, calibration=dataclasses.replace(target.calibration, nic_gbps=gbit / 8))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def interval_stats(row: dict, k: int, tokens: int, experts: int) -> RoutingStats:
    """One logged step's routing statistics (means over the MoE layers) in the cluster model's terms; the
    busiest device (one expert each) computes min(its routed copies, its capacity)."""
    cross, in_node, dropped = row["cross_node_fraction"], row["in_node_fraction"], row["dropped_fraction"]
    mean_kept = k * tokens / experts * max(1.0 - dropped, 1e-9)
    busiest = min(row["max_expert_load"], row.get("capacity", float("inf")))
    return RoutingStats(
        max(1.0 - cross - in_node, 0.0), in_node, cross, dropped, max(busiest / mean_kept, 1.0), top_k=k
    )


def modeled_clock(rows: list[dict], steps: int, run_cfg, target, model: TargetModel, dispatch: str) -> np.ndarray:
    # the run's own sequence placement is charged on the target (``affinity`` runs the lower blocks again)
    """[steps + 1] modeled seconds after each step on ``target`` (each logged step's statistics stand for
    the steps since the previous log; the steps before the first log take the first one's)."""
    k, E = run_cfg.moe.router.top_k, run_cfg.moe.num_experts
    ranks = run_cfg.parallel.nodes * run_cfg.parallel.devices_per_node
    tokens = run_cfg.train.batch_size * ranks * run_cfg.data.seq_len
    logged = [r for r in rows if "cross_node_fraction" in r]
    per_step = np.zeros(steps + 1)
    prev = 0
    for r in logged:
        ms = step_time(model, interval_stats(r, k, tokens, E), dispatch, target, run_cfg.data.placement)["step_ms"]
        per_step[prev + 1 : r["step"] + 1] = ms / 1e3
        prev = r["step"]
    per_step[prev + 1 :] = per_step[prev] if prev else 0.0
    return np.cumsum(per_step)


def crossing(curve: list[tuple], target: float):
    """The (fractional) step at which the validation curve first reaches ``target`` (None: never)."""
    prev = None
    for step, val in curve:
        if val <= target:
            if prev is None or prev[1] == val:
                return float(step)
            return prev[0] + (step - prev[0]) * (prev[1] - target) / (prev[1] - val)
        prev = (step, val)
    return None


def run_config(run):
    """The config the run trained with: its final checkpoint's (``train_state.json``). A run kept without its
    checkpoints is resolved again from its entry, with the router fragments as they are now."""
    sealed = list_checkpoints(run.out)
    if sealed:
        return config_from_dict(load_state(sealed[-1][1])["config"])
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml", run.sets, layers=[ROOT / "configs" / "routers" / f"{run.router}.yaml"]
    )


def run_record(run, steps: int) -> dict:
    """One run: config, curve, mean traffic after warm-up, and its modeled clock on each target."""
    cfg = run_config(run)
    rows = read_metrics(run.out)
    curve = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    logged = [r for r in rows if "cross_node_fraction" in r and r["step"] > steps // 5] or [
        r for r in rows if "cross_node_fraction" in r
    ]
    mean = lambda key: statistics.fmean(r[key] for r in logged)  # noqa: E731
    target_cfg = load_config(
        TARGET_JOB, [f"parallel.nodes={run.nodes}", f"parallel.devices_per_node={16 // run.nodes}"]
    )
    model = TargetModel.from_config(target_cfg)
    dispatch = "hierarchical" if cfg.moe.router.kind == "locmoe" else "flat"
    clocks = {
        name: modeled_clock(rows, steps, cfg, with_topology(t, run.nodes, 16 // run.nodes), model, dispatch)
        for name, t in TARGETS.items()
    }
    h100 = with_topology(TARGETS["h100"], run.nodes, 16 // run.nodes)
    nic_sweep = {
        gbit: 1e3 * modeled_clock(rows, steps, cfg, with_nic(h100, gbit), model, dispatch)[-1] / steps
        for gbit in NIC_SWEEP_GBIT
    }
    return {
        "router": run.entry,
        "corpus": run.corpus_name,
        "nodes": run.nodes,
        "seed": run.seed,
        "val_loss": curve[-1][1],
        "curve": curve,
        "cross_node_fraction": mean("cross_node_fraction"),
        "in_node_fraction": mean("in_node_fraction"),
        "dropped_fraction": mean("dropped_fraction"),
        "step_ms_measured": 1e3 * statistics.median(r["step_time_s"] for r in logged),
        "modeled_step_ms": {name: 1e3 * c[-1] / steps for name, c in clocks.items()},
        "clock_at_eval": {name: [float(c[s]) for s, _ in curve] for name, c in clocks.items()},
        "modeled_step_ms_h100_by_nic_gbit": nic_sweep,
        "_clocks": clocks,
    }


def mean_std(values: list):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def analyse(runs: list, steps: int) -> dict:
    records = [run_record(r, steps) for r in runs]
    groups: dict = {}
    for rec in records:
        groups.setdefault((rec["corpus"], rec["nodes"]), []).append(rec)
    rows = []
    for (corpus, nodes), recs in groups.items():
        gshard = [r for r in recs if r["router"] == "gshard"]
        goal = statistics.fmean(r["val_loss"] for r in gshard) if gshard else None
        base_cross = statistics.fmean(r["cross_node_fraction"] for r in gshard) if gshard else None
        for router in dict.fromkeys(r["router"] for r in recs):
            mine = [r for r in recs if r["router"] == router]
            row = {"corpus": corpus, "nodes": nodes, "router": router, "seeds": len(mine)}
            for key in ("val_loss", "cross_node_fraction", "dropped_fraction", "step_ms_measured"):
                row[key], row[key + "_std"] = mean_std([r[key] for r in mine])
            if goal is not None and base_cross is not None:  # both from the gshard runs, or neither
                row["target_val_loss"] = goal
                row["val_loss_vs_gshard"] = row["val_loss"] / goal - 1
                row["cross_node_vs_gshard"] = row["cross_node_fraction"] / max(base_cross, 1e-12)
                row["reached"] = sum(crossing(r["curve"], goal) is not None for r in mine)
                # on the mean curve over seeds: one seed's noise (GShard's own seeds straddle its mean) would
                # otherwise decide whether a router "reaches" the target at all
                steps_axis = [s for s, _ in mine[0]["curve"]]
                mean_curve = list(zip(steps_axis, np.mean([[v for _, v in r["curve"]] for r in mine], axis=0)))
                hit = crossing(mean_curve, goal)
                row["steps_to_target"] = hit
                row["final_gap_to_target"] = mean_curve[-1][1] - goal
                base_runs = [r for r in recs if r["router"] == "gshard"]
                row["step_vs_gshard_h100_by_nic_gbit"] = {
                    g: statistics.fmean(r["modeled_step_ms_h100_by_nic_gbit"][g] for r in mine)
                    / statistics.fmean(r["modeled_step_ms_h100_by_nic_gbit"][g] for r in base_runs)
                    for g in NIC_SWEEP_GBIT
                }
                for name in TARGETS:
                    clock = np.mean([r["_clocks"][name] for r in mine], axis=0)
                    row[f"modeled_step_ms_{name}"] = statistics.fmean(r["modeled_step_ms"][name] for r in mine)
                    row[f"time_to_target_s_{name}"] = (
                        None if hit is None else float(np.interp(hit, np.arange(steps + 1), clock))
                    )
            rows.append(row)
        for name in TARGETS:
            base = next(
                (
                    r[f"time_to_target_s_{name}"]
                    for r in rows
                    if (r["corpus"], r["nodes"], r["router"]) == (corpus, nodes, "gshard")
                ),
                None,
            )
            for r in rows:
                if (r["corpus"], r["nodes"]) == (corpus, nodes) and base and r.get(f"time_to_target_s_{name}"):
                    r[f"time_vs_gshard_{name}"] = r[f"time_to_target_s_{name}"] / base
    for rec in records:
        rec.pop("_clocks")
    return {
        "targets": {n: {"name": t.name, "source": t.source} for n, t in TARGETS.items()},
        "rows": rows,
        "runs": records,
    }


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def tables(result: dict) -> str:
    lines = []
    for r in result["rows"]:
        lines.append(
            {
                "corpus": r["corpus"],
                "nodes": r["nodes"],
                "router": r["router"],
                "n": r["seeds"],
                "val loss": f"{r['val_loss']:.4f}±{r['val_loss_std']:.4f}",
                "vs GShard": _fmt(r.get("val_loss_vs_gshard"), "+.2%"),
                "cross-node": f"{r['cross_node_fraction']:.3f}",
                "x GShard": _fmt(r.get("cross_node_vs_gshard"), ".2f"),
                "dropped": f"{r['dropped_fraction']:.3f}",
                "seeds reaching": f"{r.get('reached', '')}/{r['seeds']}",
                "steps to GShard's loss (mean curve)": _fmt(r.get("steps_to_target"), ".0f") or "not reached",
                **{f"step ms {n}": _fmt(r.get(f"modeled_step_ms_{n}"), ".0f") for n in TARGETS},
                **{f"time x GShard {n}": _fmt(r.get(f"time_vs_gshard_{n}"), ".3f") or "-" for n in TARGETS},
            }
        )
    text = format_table(lines)
    sweep = [
        {"corpus": r["corpus"], "nodes": r["nodes"], "router": r["router"]}
        | {f"step x GShard, {g} Gb/s NIC": f"{v:.3f}" for g, v in r["step_vs_gshard_h100_by_nic_gbit"].items()}
        for r in result["rows"]
        if "step_vs_gshard_h100_by_nic_gbit" in r
    ]
    if sweep:
        text += "\n\nmodeled step on the H100 target with slower NICs (the runs' own routing statistics):\n"
        text += format_table(sweep)
    return text + "\n\ntargets: " + "; ".join(f"{t['name']}: {t['source']}" for t in result["targets"].values())


def plot(result: dict, path: Path) -> list:
    """Per target: validation loss against modeled time, one panel per (corpus, nodes), mean over seeds."""
    from locmoe.training.plots import new_figure

    groups = list(dict.fromkeys((r["corpus"], r["nodes"]) for r in result["runs"]))
    out = []
    for name, target in result["targets"].items():
        fig = new_figure((5 * len(groups), 4.2))
        for i, (corpus, nodes) in enumerate(groups):
            ax = fig.add_subplot(1, len(groups), i + 1)
            recs = [r for r in result["runs"] if (r["corpus"], r["nodes"]) == (corpus, nodes)]
            for router in dict.fromkeys(r["router"] for r in recs):
                mine = [r for r in recs if r["router"] == router]
                t = np.mean([r["clock_at_eval"][name] for r in mine], axis=0) / 3600
                v = np.mean([[val for _, val in r["curve"]] for r in mine], axis=0)
                ax.plot(t, v, marker=".", label=router)
            ax.set(
                xlabel=f"modeled hours on {target['name'].split(' ')[0]} ({nodes} nodes)",
                ylabel="validation loss",
                title=f"{corpus}, {nodes} nodes",
            )
            ax.set_ylim(top=min(ax.get_ylim()[1], np.min([r["val_loss"] for r in recs]) * 1.25))
            ax.grid(alpha=0.3)
        fig.axes[-1].legend(fontsize=6)
        png = path.with_name(f"{path.stem}_{name}.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
        out.append(png)
    return out + [pareto(result, groups, path.with_name(f"{path.stem}_pareto.png"))]


def pareto(result: dict, groups: list, png: Path) -> Path:
    """Final validation loss against cross-node share of copies: one point per run, one panel per (corpus, nodes)."""
    from locmoe.training.plots import new_figure

    fig = new_figure((5 * len(groups), 4.2))
    for i, (corpus, nodes) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        recs = [r for r in result["runs"] if (r["corpus"], r["nodes"]) == (corpus, nodes)]
        for j, router in enumerate(dict.fromkeys(r["router"] for r in recs)):
            mine = [r for r in recs if r["router"] == router]
            xs, ys = [r["cross_node_fraction"] for r in mine], [r["val_loss"] for r in mine]
            ax.scatter(xs, ys, s=22, marker="osD^v<>ph*"[j % 10], label=router)
        ax.set(xlabel="cross-node share of copies", ylabel="final validation loss", title=f"{corpus}, {nodes} nodes")
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=6)
    fig.savefig(png)
    return png
