"""LocMoE (shipped, and as the paper defines it) against the routers the field uses now, in real pretraining,
judged over seeds on two corpora: mean ± std of each router's validation loss, cross-node copies, drops,
capacity and step time; the paper capacity rule beside ``quantile`` and factor 1.25 on the same runs; and a
picture of validation loss against cross-node fraction (one point per router and seed).

    python scripts/bench/router_compare.py --data /path/tinyshakespeare.txt --data stdlib --seeds 3
    python scripts/bench/router_compare.py --smoke                     # CPU, tiny, seconds per run: the CI check

``--data``: a text file, or ``stdlib`` (the Python standard library's sources, the default). Each run is
``locmoe train`` in its own process, one process emulating ``--nodes`` nodes x 1 device (default 2: every copy
that leaves its rank crosses a "node"; no all-to-all is timed), ``--jobs`` of them at once: on a GPU their step
times are shared-GPU times, comparable between routers of one invocation, not absolute. Writes the JSON (``--out``) and
the PNG (``--png``). Goals checked (issue 14): LocMoE's val loss <= GShard's mean + 0.5 % with cross-node copies
<= 0.2x GShard's; LocMoE's val loss against node-limited (M = 1) and loss-free routing at their cross-node
fractions; the paper bound's capacity and drops beside quantile and factor 1.25.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import router_runs as rr  # noqa: E402

from locmoe.report import format_table, write_json  # noqa: E402

# (variant [@overrides], label): the rows of the default comparison
ROUTERS = [
    ("locmoe", "LocMoE shipped (GrAP top-2, rho 0.9, embedding placement, quantile bound)"),
    ("locmoe_paper", "LocMoE paper (ReLU+eps top-1, batch KL, Theorem-1 bound)"),
    ("gshard", "GShard top-2 (factor 1.25)"),
    ("switch", "Switch top-1 (factor 1.25)"),
    ("node_limited", "node-limited M=1 (DeepSeek-V3 top2-sum)"),
    ("node_limited@moe.router.node_limit=2", "node-limited M=2 (only with --nodes > 2)"),
    ("aux_free", "aux-loss-free (DeepSeek-V3 sigmoid + bias)"),
    ("locmoe@data.placement=drawn@moe.router.rho=0.5", "LocMoE before 2026-12-07 (rho 0.5, no placement)"),
    ("locmoe_paper@moe.router.locality_loss_coef=0.1", "LocMoE paper, mu 0.1"),
]
LABELS = dict(ROUTERS)
# The comparison model: 16 experts, d = 256, 3 MoE blocks, 8k tokens per step (2 emulated ranks x 16 x 256)
GPU_MODEL = [
    "model.d_model=256",
    "model.n_layers=4",
    "model.n_heads=4",
    "model.d_ff=768",
    "model.dense_layers=1",
    "model.moe_every=1",
    "model.max_seq_len=256",
    "moe.num_experts=16",
    "moe.d_expert=512",
    "moe.fuse_kernels=false",
    "data.seq_len=256",
    "train.batch_size=16",
    "train.lr=2e-3",
    "train.min_lr=2e-4",
    "data.max_bytes=2000000",
]
SMOKE_MODEL = [
    "model.d_model=64",
    "model.n_layers=3",
    "model.n_heads=4",
    "model.d_ff=128",
    "model.dense_layers=1",
    "model.max_seq_len=64",
    "moe.num_experts=8",
    "moe.d_expert=64",
    "data.seq_len=64",
    "train.batch_size=4",
    "data.max_bytes=100000",
    "train.eval_batches=2",
]
METRICS = ("val_loss", "cross_node_fraction", "dropped_fraction", "max_capacity_over_mean_load", "step_ms")


def mean_std(values: list) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict], shadows: dict) -> list[dict]:
    """One row per (router, corpus): mean and std over seeds of every metric, and the same-run capacity rules."""
    rows = []
    for key in dict.fromkeys((r["router"], r["corpus"]) for r in runs):
        mine = [r for r in runs if (r["router"], r["corpus"]) == key]
        row = {"router": key[0], "corpus": key[1], "seeds": len(mine)}
        for m in METRICS:
            row[m], row[m + "_std"] = mean_std([r[m] for r in mine])
        sh = [shadows[r["run_dir"]] for r in mine if r["run_dir"] in shadows]
        if sh:
            row["capacity_rules"] = {
                rule: {k: mean_std([s[rule][k] for s in sh])[0] for k in sh[0][rule]} for rule in sh[0]
            }
        rows.append(row)
    return rows


def goals(rows: list[dict]) -> dict:
    """Per corpus: the issue's comparisons (only those whose rows ran)."""
    out = {}
    for corpus in dict.fromkeys(r["corpus"] for r in rows):
        by = {r["router"]: r for r in rows if r["corpus"] == corpus}
        g = {}
        if "locmoe" in by and "gshard" in by:
            lm, gs = by["locmoe"], by["gshard"]
            g["val_loss_vs_gshard"] = lm["val_loss"] / gs["val_loss"] - 1
            g["cross_node_vs_gshard"] = lm["cross_node_fraction"] / max(gs["cross_node_fraction"], 1e-12)
            g["step_time_vs_gshard"] = lm["step_ms"] / gs["step_ms"]
            g["locmoe_meets_gshard_goal"] = g["val_loss_vs_gshard"] <= 0.005 and g["cross_node_vs_gshard"] <= 0.2
        for rival in ("node_limited", "aux_free"):
            if "locmoe" in by and rival in by:
                lm, rv = by["locmoe"], by[rival]
                g[f"vs_{rival}"] = {
                    "locmoe_val_loss": lm["val_loss"],
                    "rival_val_loss": rv["val_loss"],
                    "locmoe_cross": lm["cross_node_fraction"],
                    "rival_cross": rv["cross_node_fraction"],
                    "locmoe_not_worse": lm["val_loss"] <= rv["val_loss"],
                }
        out[corpus] = g
    return out


def pm(row: dict, key: str, fmt: str) -> str:
    return "" if row[key] is None else f"{row[key]:{fmt}}±{row[key + '_std']:{fmt}}"


def tables(rows: list[dict]) -> str:
    main = [
        {
            "router": LABELS.get(r["router"], r["router"]),
            "corpus": r["corpus"],
            "n": r["seeds"],
            "val loss": pm(r, "val_loss", ".4f"),
            "cross-node": pm(r, "cross_node_fraction", ".3f"),
            "dropped": pm(r, "dropped_fraction", ".3f"),
            "max cap/mean": pm(r, "max_capacity_over_mean_load", ".2f"),
            "step ms": pm(r, "step_ms", ".1f"),
        }
        for r in rows
    ]
    text = format_table(main)
    same = [
        {
            "router": LABELS.get(r["router"], r["router"]),
            "corpus": r["corpus"],
            **{
                f"{rule} {short}": f"{v[key]:.3f}"
                for rule, v in r["capacity_rules"].items()
                for key, short in (("capacity_over_mean_load", "C/mean"), ("dropped_fraction", "drop"))
            },
        }
        for r in rows
        if "capacity_rules" in r
    ]
    if same:
        text += "\n\ncapacity rules on the same runs (paper: the run's own first-batch delta):\n" + format_table(same)
    return text


def plot(runs: list[dict], path: Path) -> Path:
    """Validation loss against cross-node fraction: one panel per corpus, one point per router and seed."""
    from locmoe.training.plots import new_figure

    corpora = list(dict.fromkeys(r["corpus"] for r in runs))
    routers = list(dict.fromkeys(r["router"] for r in runs))
    fig = new_figure((5.5 * len(corpora), 4.5))
    for i, corpus in enumerate(corpora):
        ax = fig.add_subplot(1, len(corpora), i + 1)
        for j, router in enumerate(routers):
            pts = [r for r in runs if r["corpus"] == corpus and r["router"] == router]
            ax.scatter(
                [r["cross_node_fraction"] for r in pts],
                [r["val_loss"] for r in pts],
                s=28,
                marker="osD^v<>ph*"[j % 10],
                label=LABELS.get(router, router),
            )
        ax.set(xlabel="cross-node fraction of token copies", ylabel="validation loss", title=corpus)
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=6, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _vacuous(entry: str, nodes: int) -> bool:
    """A node limit of M >= nodes limits nothing: the row would repeat GShard's."""
    limits = [int(o.split("=")[1]) for o in entry.split("@")[1:] if o.startswith("moe.router.node_limit=")]
    return bool(limits) and limits[0] >= nodes


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", action="append", help="a corpus: a text file or 'stdlib' (repeat for several; default stdlib)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per router and corpus, 0..N-1 (train.seed = data.seed); default 3 (smoke 1)",
    )
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default 250; smoke 4)")
    p.add_argument(
        "--routers",
        default=None,
        help="comma-separated configs/routers/ names, each optionally with "
        "overrides: locmoe@moe.router.rho=0.9@moe.capacity.mode=factor (default: the rows of ROUTERS)",
    )
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default 12 on a GPU, 2 with --smoke)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes per run: 1 = one process emulating every node; "
        "a multiple of --nodes = torchrun with nproc/nodes per node (then use --jobs 1)",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=2,
        help="nodes of the (emulated) topology; node-limited rows with "
        "M >= nodes are left out of the default rows (they equal GShard)",
    )
    p.add_argument("--job", default="tiny_cpu", help="configs/JOB.yaml; tiny_cpu gets the comparison model's sizes")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default bfloat16 (smoke float32)")
    p.add_argument("--shadow-batches", type=int, default=2, help="validation batches of the same-run capacity rules")
    p.add_argument("--smoke", action="store_true", help="tiny CPU model, 4 steps, 1 seed: checks the script")
    p.add_argument("--work", default="bench_results/router_compare_runs")
    p.add_argument("--out", default="bench_results/router_compare.json")
    p.add_argument("--png", default=None, help="the plot (default: --out with .png)")
    args = p.parse_args()
    if args.nodes < 2 or (args.nproc != 1 and args.nproc % args.nodes):
        raise SystemExit(f"--nodes must be >= 2 and --nproc 1 or a multiple of --nodes ({args.nodes})")
    if args.routers is None:
        args.routers = ",".join(e for e, _ in ROUTERS if not _vacuous(e, args.nodes))
    args.data = args.data or [rr.STDLIB]
    for d in args.data:
        if d != rr.STDLIB and not Path(d).is_file():
            raise SystemExit(f"--data {d}: no such file (a text file, or 'stdlib')")
    args.steps = args.steps or (4 if args.smoke else 250)
    args.seeds = args.seeds or (1 if args.smoke else 3)
    args.jobs = args.jobs or (2 if args.smoke else 12)
    args.dtype = args.dtype or ("float32" if args.smoke else "bfloat16")
    return args


def main() -> None:
    args = parse()
    start = time.perf_counter()
    from locmoe.config import load_config

    model = SMOKE_MODEL if args.smoke else GPU_MODEL if args.job == "tiny_cpu" else []
    device = "cpu" if args.smoke else "cuda"
    runs = []
    for corpus in args.data:
        for entry in args.routers.split(","):
            for seed in range(args.seeds):
                name = f"{rr.Run(entry, corpus, seed, Path()).corpus_name}/{entry.replace('@', '_')}/seed{seed}"
                run = rr.Run(entry, corpus, seed, rr.fresh(Path(args.work) / name.replace("=", "-")))
                run.sets = rr.run_sets(run, model, args.steps, args.dtype, args.nproc, args.nodes, device)
                runs.append(run)
    rr.run_all(
        [(f"{r.corpus_name}/{r.entry}/seed{r.seed}", r.command(args.job, args.nproc), r.log) for r in runs],
        args.jobs,
    )
    summaries, paper = [], []
    for r in runs:
        cfg = load_config(
            rr.ROOT / "configs" / f"{args.job}.yaml",
            r.sets,
            layers=[rr.ROOT / "configs" / "routers" / f"{r.router}.yaml"],
        )
        ranks = args.nodes * max(args.nproc // args.nodes, 1)
        tokens = cfg.train.batch_size * ranks * cfg.data.seq_len
        summaries.append(rr.summarise(r, cfg.moe.router.top_k * tokens / cfg.moe.num_experts))
        if cfg.moe.capacity.mode == "bound" and cfg.moe.capacity.bound_rule == "paper":
            paper.append(r)
    shadow_cmd = lambda r: [  # noqa: E731
        sys.executable,
        str(Path(__file__).parent / "capacity_shadow.py"),
        str(r.out),
        "--batches",
        str(args.shadow_batches),
        "--out",
        str(r.out / "shadow.json"),
    ]
    rr.run_all(
        [(f"shadow {r.corpus_name}/{r.entry}/seed{r.seed}", shadow_cmd(r), r.out / "shadow_log.txt") for r in paper],
        args.jobs,
    )
    shadows = {str(r.out): json.loads((r.out / "shadow.json").read_text())["rules"] for r in paper}
    rows = aggregate(summaries, shadows)
    print(tables(rows))
    g = goals(rows)
    for corpus, gc in g.items():
        if "val_loss_vs_gshard" in gc:
            print(
                f"{corpus}: LocMoE vs GShard: val loss {gc['val_loss_vs_gshard']:+.2%} (goal <= +0.5%), cross-node "
                f"copies {gc['cross_node_vs_gshard']:.2f}x (goal <= 0.2x)"
            )
        for rival in ("node_limited", "aux_free"):
            v = gc.get(f"vs_{rival}")
            if v:
                print(
                    f"{corpus}: LocMoE {v['locmoe_val_loss']:.4f} at cross-node {v['locmoe_cross']:.3f} vs {rival} "
                    f"{v['rival_val_loss']:.4f} at {v['rival_cross']:.3f} (goal: LocMoE not worse)"
                )
    name = rr.device_name(args.smoke)
    first = next(iter(g.values()), {})
    payload = {
        "device": name,
        "wall_s": time.perf_counter() - start,
        "nproc": args.nproc,
        "nodes": args.nodes,
        "jobs": args.jobs,
        "steps": args.steps,
        "seeds": args.seeds,
        "corpora": [rr.Run("", d, 0, Path()).corpus_name for d in args.data],
        "model": model,
        "rows": rows,
        "runs": summaries,
        "goals": g,
        "vs_gshard": {
            k: first[k] for k in ("val_loss_vs_gshard", "cross_node_vs_gshard", "step_time_vs_gshard") if k in first
        },
    }
    png = plot(summaries, Path(args.png or Path(args.out).with_suffix(".png")))
    print(f"wrote {write_json(args.out, payload)} and {png} ({payload['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
