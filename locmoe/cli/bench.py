"""``locmoe bench calibrate``: measure the expert kernels, device copies and (under torchrun) the
all-to-all on this device and write the cost model's JSON profile. ``locmoe bench prefill``: prefill
tokens/s of a checkpoint for a batch of prompts of given lengths, plain and with the expert pipeline."""

from __future__ import annotations

import argparse
import time

from locmoe.cli.args import int_at_least
from locmoe.inference.errors import InferenceError

# Calibration shapes by device: an accelerator's are the 1B-class expert sizes the cost model plans for; the
# CPU's are small enough to finish in seconds on a laptop (GPU sizes ran > 10 minutes and 4.7 GB there).
SHAPES = {
    "accelerator": dict(experts=64, d_model=2048, d_expert=1408, rows="64,128,256,512,1024,2048", reps=5),
    "cpu": dict(experts=8, d_model=256, d_expert=512, rows="16,32,64,128", reps=3),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from locmoe.cli.generate import add_serving_arguments

    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    c = sub.add_parser("calibrate", help="measure this device; write the cost model's profile (JSON)")
    gpu, cpu = SHAPES["accelerator"], SHAPES["cpu"]
    c.add_argument("--out", required=True, help="profile JSON to write")
    c.add_argument(
        "--experts",
        type=int_at_least(1),
        default=None,
        help=f"experts per MoE layer, all ranks (E); default {gpu['experts']} on CUDA, {cpu['experts']} on CPU",
    )
    c.add_argument(
        "--d-model",
        type=int_at_least(1),
        default=None,
        help=f"hidden size d; default {gpu['d_model']} on CUDA, {cpu['d_model']} on CPU",
    )
    c.add_argument(
        "--d-expert",
        type=int_at_least(1),
        default=None,
        help=f"expert FFN hidden size; default {gpu['d_expert']} on CUDA, {cpu['d_expert']} on CPU",
    )
    c.add_argument(
        "--rows",
        default=None,
        help="mean rows per local expert of the measured batches "
        f"(comma-separated); default {gpu['rows']} on CUDA, {cpu['rows']} on CPU",
    )
    c.add_argument(
        "--reps",
        type=int_at_least(1),
        default=None,
        help=f"timed repetitions per call; default {gpu['reps']} on CUDA, {cpu['reps']} on CPU",
    )
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if present")
    c.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default bfloat16 on CUDA, float32 on CPU",
    )
    f = sub.add_parser("prefill", help="prefill tokens/s of a checkpoint (plain vs pipelined)")
    f.add_argument("checkpoint", help="checkpoint directory, or a run's out_dir (its newest checkpoint)")
    f.add_argument("router", help="exported router directory (`locmoe export`, or out_dir/router)")
    f.add_argument("--lengths", default="128", help="prompt lengths to measure (comma-separated)")
    f.add_argument("--batch", type=int_at_least(1), default=4, help="prompts per rank per measured batch")
    f.add_argument("--reps", type=int_at_least(1), default=3, help="timed repetitions per measurement")
    f.add_argument("--json", default=None, help="also write the results here (default: print only)")
    add_serving_arguments(f)


def _ints(text: str, flag: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InferenceError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise InferenceError(f"{flag} {text!r}: expected positive integers")
    return vals


def main(args: argparse.Namespace) -> int:
    return calibrate(args) if args.what == "calibrate" else prefill(args)


def calibrate(args: argparse.Namespace) -> int:
    import os

    import torch
    import torch.distributed as dist

    from backends.torch.collectives import Group
    from backends.torch.distributed import _backend_for, resolve_device, shutdown
    from backends.torch.inference.calibrate import CalibrationShape
    from backends.torch.inference.calibrate import calibrate as run
    from backends.torch.inference.loader import DTYPES

    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    defaults = SHAPES["cpu" if device.type == "cpu" else "accelerator"]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    rows = _ints(args.rows, "--rows")
    W = int(os.environ.get("WORLD_SIZE", 1))
    if args.experts % W:
        raise InferenceError(f"--experts {args.experts} is not divisible by the {W} launched processes")
    if W > 1 and not dist.is_initialized():
        dist.init_process_group(_backend_for(device))
    rank = dist.get_rank() if W > 1 else 0
    group = Group(dist.group.WORLD if W > 1 else None, tuple(range(W)), (0,) * W, rank)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shape = CalibrationShape(args.experts // W, args.d_model, args.d_expert, tuple(rows), reps=args.reps)
    start = time.perf_counter()

    def progress(text: str) -> None:
        if rank == 0:
            print(f"calibrate [{time.perf_counter() - start:5.1f} s] {text}", flush=True)

    progress(
        f"{device.type}, {str(dtype).replace('torch.', '')}: E={args.experts} (local {shape.experts}), "
        f"d={args.d_model}, f={args.d_expert}, rows per expert {rows}, {args.reps} reps"
    )
    profile = run(shape, device, dtype, group, progress)
    if rank == 0:
        profile.save(args.out)
        a2a = profile.all_to_all
        print(
            f"calibrated {profile.device} ({profile.dtype}, {W} process(es)): grouped "
            f"{1e-12 / profile.grouped.s_per_flop:.3g} TFLOP/s, dense {1e-12 / profile.dense.s_per_flop:.3g} "
            f"TFLOP/s, copy {profile.copy.bandwidth_gbps:.3g} GB/s"
            + (f", all-to-all {a2a.bandwidth_gbps:.3g} GB/s + {a2a.latency_s * 1e6:.3g} us" if a2a else "")
            + f"; median fit errors {', '.join(f'{k} {v:.1%}' for k, v in profile.fit_error.items())}"
            + f" -> {args.out}"
        )
    shutdown()
    return 0


def verdicts(rows: list[dict]) -> list[str]:
    """Which mode won at each length, by how much (the table holds the numbers; this line reads them)."""
    out = []
    for S in dict.fromkeys(r["length"] for r in rows):
        mine = sorted((r for r in rows if r["length"] == S), key=lambda r: -r["tokens_per_s"])
        if len(mine) < 2:
            out.append(
                f"length {S}: only {mine[0]['mode']} was measured, nothing to compare (a --profile, --chunks > 1 "
                "or --mode chunked|pipelined adds a second mode)"
            )
            continue
        best, other = mine[0], mine[1]
        out.append(
            f"length {S}: {best['mode']} wins, {best['tokens_per_s'] / other['tokens_per_s']:.2f}x "
            f"{other['mode']}'s tokens/s"
        )
    return out


def prefill(args: argparse.Namespace) -> int:
    import dataclasses

    from backends.torch.distributed import shutdown
    from backends.torch.inference.loader import load_inference_model
    from backends.torch.inference.prefill import measure_prefill, random_prompts
    from locmoe.cli.generate import serving_options
    from locmoe.report import format_table, write_json

    lengths = _ints(args.lengths, "--lengths")
    opts = serving_options(args)
    model = load_inference_model(args.checkpoint, args.router, args.device, args.dtype, args.capacity)
    if max(lengths) > model.context:
        raise InferenceError(f"--lengths {max(lengths)} is longer than the model's context of {model.context}")
    me = model.group.my_index
    modes = [dataclasses.replace(opts, mode="plain", chunks=0)] + ([opts] if opts.mode != "plain" else [])
    rows = []
    for S in lengths:
        tokens = random_prompts(model.cfg.model.vocab_size, args.batch, S, 1000 * S + me, model.rope_cos.device)
        for o in modes:
            r = measure_prefill(model, tokens, o, o.mode, reps=args.reps)
            chunks = sorted({layer["chunks"] for layer in r.layers})
            rows.append(
                {
                    "length": S,
                    "mode": o.mode,
                    "chunks": ",".join(map(str, chunks)),
                    "tokens": r.tokens,
                    "ms": r.seconds * 1e3,
                    "tokens_per_s": r.tokens_per_s,
                }
            )
    if me == 0:
        print(format_table(rows, ["length", "mode", "chunks", "tokens", "ms", "tokens_per_s"], ".4g"))
        for line in verdicts(rows):
            print(line)
        if args.json:
            write_json(args.json, {"rows": rows, "world_size": model.group.size})
    shutdown()
    return 0
