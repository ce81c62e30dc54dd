"""Prefill throughput of the PanGu-Sigma-style model with the EPS-style expert pipeline vs without, on the
GPUs of one host (torchrun, NCCL); random weights. Calibrates the cost model first, then for each router:
tokens/s plain / chunked / pipelined (chunks from the cost model, and fixed counts for comparison), the
kernel and chunk count of every MoE layer, the cost model's predicted vs measured expert-stage time per
layer, one layer's stage timeline (when each chunk's dispatch, experts and combine ran), and the largest
logit difference between pipelined and plain execution. One table, one JSON.

    torchrun --standalone --nproc_per_node 2 scripts/bench/prefill.py [--out bench_results/prefill.json]
    torchrun --standalone --nproc_per_node 2 scripts/bench/prefill.py --smoke      # tiny, CPU, gloo

``--force-balance`` routes every token round-robin (``moe.force_balance``): the pipeline's figures without
the router's imbalance, as Megatron's and torchtitan's are quoted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from backends.torch.distributed import shutdown  # noqa: E402
from backends.torch.inference.calibrate import CalibrationShape, calibrate  # noqa: E402
from backends.torch.inference.loader import build_inference_model, finish, random_weights  # noqa: E402
from backends.torch.inference.options import ServeOptions  # noqa: E402
from backends.torch.inference.prefill import measure_prefill, random_prompts  # noqa: E402
from locmoe.config import load_config  # noqa: E402
from locmoe.model_spec import moe_layer_indices  # noqa: E402
from locmoe.parallel.topology import ExpertPlacement, Topology  # noqa: E402
from locmoe.report import format_table, write_json  # noqa: E402

FULL = dict(
    d=2048,
    heads=16,
    experts=64,
    d_expert=1408,
    top_k=2,
    layers=6,
    seq=2048,
    batch=8,
    vocab=32000,
    rows="64,128,256,512,1024,2048",
)
SMOKE = dict(d=64, heads=4, experts=8, d_expert=96, top_k=2, layers=3, seq=32, batch=2, vocab=256, rows="4,16,64")


def job(a, router: str):
    return load_config(
        overrides=[
            f"model.d_model={a.d}",
            f"model.n_heads={a.heads}",
            f"model.n_layers={a.layers}",
            "model.dense_layers=1",
            f"model.d_ff={4 * a.d}",
            f"model.max_seq_len={a.seq}",
            f"data.seq_len={a.seq}",
            f"model.vocab_size={a.vocab}",
            f"moe.num_experts={a.experts}",
            f"moe.d_expert={a.d_expert}",
            f"moe.router.kind={router}",
            f"moe.router.top_k={a.top_k}",
            "moe.capacity.mode=dropless",
            "moe.check_finite=false",
            "parallel.dispatch=flat",
            f"moe.force_balance={str(a.force_balance).lower()}",
        ]
    )


def build(a, router: str, W: int):
    cfg = job(a, router)
    topo = Topology(W, 1)  # one GPU per "node": LocMoE's locality rule sees the other GPU as remote
    placements = {i: ExpertPlacement.contiguous(a.experts, topo) for i in moe_layer_indices(cfg.model)}
    model = build_inference_model(cfg, topo, placements, "cpu" if a.smoke else "auto")
    return random_weights(finish(model, "float32" if a.smoke else "bfloat16"), seed=0)


def fmt_timeline(t: dict) -> str:
    keys = sorted(t, key=lambda k: t[k])
    return "  ".join(f"{k}@{t[k]:.3f}" for k in keys)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (gloo) to check the script")
    for k, v in FULL.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=None, help=f"default {v} ({SMOKE[k]} smoke)")
    p.add_argument("--routers", default="gshard,locmoe")
    p.add_argument("--fixed-chunks", default="2,4", help="also measure the pipeline at these fixed chunk counts")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--force-balance", action="store_true", help="route every token round-robin (moe.force_balance)")
    p.add_argument("--out", default="bench_results/prefill.json")
    a = p.parse_args()
    base = SMOKE if a.smoke else FULL
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if not a.smoke and not torch.cuda.is_available():
        sys.exit("prefill.py needs CUDA GPUs (or --smoke for a CPU check)")
    W = int(os.environ.get("WORLD_SIZE", 1))
    t_start = time.perf_counter()
    rows, layer_rows, timelines, extra = [], [], [], {}
    profile = None
    for router in a.routers.split(","):
        model = build(a, router, W)
        dev, me = cast(torch.Tensor, model.rope_cos).device, model.group.my_index  # a buffer
        if profile is None:
            t0 = time.perf_counter()
            shape = CalibrationShape(
                a.experts // W, a.d, a.d_expert, tuple(int(r) for r in a.rows.split(",")), reps=a.reps
            )
            profile = calibrate(shape, dev, next(model.parameters()).dtype, model.group)
            extra["calibration_s"] = time.perf_counter() - t0
        tokens = random_prompts(a.vocab, a.batch, a.seq, 1 + me, dev)
        variants = [
            ("plain", ServeOptions(mode="plain", profile=profile)),
            ("pipelined (cost model)", ServeOptions(mode="pipelined", profile=profile)),
        ]
        variants += [
            (f"pipelined, {n} chunks", ServeOptions(mode="pipelined", chunks=int(n), profile=profile))
            for n in a.fixed_chunks.split(",")
            if n
        ]
        results = {}
        for label, opts in variants:
            results[label] = r = measure_prefill(model, tokens, opts, label, reps=a.reps)
            chunks = sorted({layer["chunks"] for layer in r.layers})
            rows.append(
                dict(
                    router=router,
                    mode=label,
                    chunks=",".join(map(str, chunks)),
                    ms=r.seconds * 1e3,
                    tokens_per_s=r.tokens_per_s,
                )
            )
            for layer in r.layers:
                layer_rows.append(
                    dict(router=router, mode=label, **{k: v for k, v in layer.items() if k != "timeline_ms"})
                )
            if r.layers:
                timelines.append(
                    dict(router=router, mode=label, layer=r.layers[0]["layer"], timeline_ms=r.layers[0]["timeline_ms"])
                )
        chunks = sorted({layer["chunks"] for layer in results["pipelined (cost model)"].layers})
        n = max(chunks) if chunks else 1
        r = measure_prefill(
            model,
            tokens,
            ServeOptions(mode="chunked", chunks=n, profile=profile),
            f"chunked, {n} chunks, no overlap",
            reps=a.reps,
        )
        rows.append(dict(router=router, mode=r.label, chunks=str(n), ms=r.seconds * 1e3, tokens_per_s=r.tokens_per_s))
        plain = results["plain"].tokens_per_s
        for row in rows:
            if row["router"] == router:
                row["speedup"] = row["tokens_per_s"] / plain
        # correctness at bf16: pipelined vs plain logits of the last position
        model.options = ServeOptions(mode="plain")
        ref = model(tokens, last_only=True).float()
        model.options = ServeOptions(mode="pipelined", profile=profile)
        diff = torch.tensor((model(tokens, last_only=True).float() - ref).abs().max().item(), device=dev)
        if W > 1:
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        extra[f"{router}_max_logit_diff_pipelined_vs_plain"] = float(diff)
        extra[f"{router}_logit_scale"] = float(ref.abs().max())
        del model
    assert profile is not None  # calibrated with the first router (a.routers names at least one)
    if me == 0:
        device = profile.device
        print(
            f"prefill: d={a.d}, E={a.experts}, f={a.d_expert}, top-{a.top_k}, {a.layers} layers "
            f"({a.layers - 1} MoE), {a.batch}x{a.seq} tokens per rank, {W} rank(s), {device}, "
            f"torch {torch.__version__}"
        )
        a2a = profile.all_to_all
        print(
            f"calibration ({extra['calibration_s']:.1f} s): grouped {1e-12 / profile.grouped.s_per_flop:.3g} "
            f"TFLOP/s + {profile.grouped.per_expert_s * 1e6:.3g} us/expert + {profile.grouped.intercept_s * 1e6:.3g}"
            f" us, dense {1e-12 / profile.dense.s_per_flop:.3g} TFLOP/s + {profile.dense.intercept_s * 1e6:.3g} us,"
            f" copy {profile.copy.bandwidth_gbps:.3g} GB/s"
            + (f", all-to-all {a2a.bandwidth_gbps:.3g} GB/s + {a2a.latency_s * 1e6:.3g} us" if a2a else "")
            + f"; fit errors {', '.join(f'{k} {v:.1%}' for k, v in profile.fit_error.items())}"
        )
        print(format_table(rows, ["router", "mode", "chunks", "ms", "tokens_per_s", "speedup"], ".4g"))
        print("\nper MoE layer (rank 0; measured = expert stage, send buffer ready .. rows back, CUDA events):")
        print(
            format_table(
                layer_rows,
                [
                    "router",
                    "mode",
                    "layer",
                    "chunks",
                    "order",
                    "kernel",
                    "max_over_mean_load",
                    "predicted_serial_ms",
                    "predicted_ms",
                    "measured_ms",
                    "error_pct",
                ],
                ".3g",
            )
        )
        print("\nstage timelines (first MoE layer, rank 0, ms since the send buffer was ready):")
        for t in timelines:
            print(f"  {t['router']:>7} | {t['mode']:<24} | {fmt_timeline(t['timeline_ms'])}")
        for k, v in extra.items():
            print(f"{k}: {v:.4g}")
        print(f"total wall time {time.perf_counter() - t_start:.1f} s")
        write_json(
            a.out,
            {
                "device": device,
                "torch": torch.__version__,
                "world_size": W,
                "args": vars(a),
                "profile": dataclasses.asdict(profile),
                "rows": rows,
                "layers": layer_rows,
                "timelines": timelines,
                **extra,
            },
        )
    shutdown()


if __name__ == "__main__":
    main()
