"""``locmoe bench calibrate``: measure the expert kernels, device copies and (under torchrun) the
all-to-all on this device and write the cost model's JSON profile. ``locmoe bench prefill``: prefill
tokens/s of a checkpoint for a batch of prompts of given lengths, plain and with the expert pipeline."""
from __future__ import annotations

import argparse

from locmoe.inference.errors import InferenceError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from locmoe.inference.generate_cli import add_serving_arguments

    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    c = sub.add_parser("calibrate", help="measure this device; write the cost model's profile (JSON)")
    c.add_argument("--out", required=True, help="profile JSON to write")
    c.add_argument("--experts", type=int, default=64, help="experts per MoE layer, all ranks (E)")
    c.add_argument("--d-model", type=int, default=2048)
    c.add_argument("--d-expert", type=int, default=1408)
    c.add_argument("--rows", default="64,128,256,512,1024,2048",
                   help="mean rows per local expert of the measured batches (comma-separated)")
    c.add_argument("--reps", type=int, default=5)
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    f = sub.add_parser("prefill", help="prefill tokens/s of a checkpoint (plain vs pipelined)")
    f.add_argument("checkpoint")
    f.add_argument("router")
    f.add_argument("--lengths", default="128", help="prompt lengths to measure (comma-separated)")
    f.add_argument("--batch", type=int, default=4, help="prompts per rank per measured batch")
    f.add_argument("--reps", type=int, default=3)
    f.add_argument("--json", default=None, help="also write the results here")
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
    from backends.torch.inference.calibrate import CalibrationShape, calibrate as run
    from backends.torch.inference.loader import DTYPES

    rows = _ints(args.rows, "--rows")
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    W = int(os.environ.get("WORLD_SIZE", 1))
    if args.experts % W:
        raise InferenceError(f"--experts {args.experts} is not divisible by the {W} launched processes")
    if W > 1 and not dist.is_initialized():
        dist.init_process_group(_backend_for(device))
    rank = dist.get_rank() if W > 1 else 0
    group = Group(dist.group.WORLD if W > 1 else None, tuple(range(W)), (0,) * W, rank)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shape = CalibrationShape(args.experts // W, args.d_model, args.d_expert, tuple(rows), reps=args.reps)
    profile = run(shape, device, dtype, group)
    if rank == 0:
        profile.save(args.out)
        a2a = profile.all_to_all
        print(f"calibrated {profile.device} ({profile.dtype}, {W} process(es)): grouped "
              f"{1e-12 / profile.grouped.s_per_flop:.3g} TFLOP/s, dense {1e-12 / profile.dense.s_per_flop:.3g} "
              f"TFLOP/s, copy {profile.copy.bandwidth_gbps:.3g} GB/s"
              + (f", all-to-all {a2a.bandwidth_gbps:.3g} GB/s + {a2a.latency_s * 1e6:.3g} us" if a2a else "")
              + f"; median fit errors {', '.join(f'{k} {v:.1%}' for k, v in profile.fit_error.items())}"
              + f" -> {args.out}")
    shutdown()
    return 0


def prefill(args: argparse.Namespace) -> int:
    import dataclasses

    from backends.torch.distributed import shutdown
    from backends.torch.inference.loader import load_inference_model
    from backends.torch.inference.prefill import measure_prefill, random_prompts
    from locmoe.inference.generate_cli import serving_options
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
            rows.append({"length": S, "mode": o.mode, "chunks": ",".join(map(str, chunks)),
                         "tokens": r.tokens, "ms": r.seconds * 1e3, "tokens_per_s": r.tokens_per_s})
    if me == 0:
        print(format_table(rows, ["length", "mode", "chunks", "tokens", "ms", "tokens_per_s"], ".4g"))
        if args.json:
            write_json(args.json, {"rows": rows, "world_size": model.group.size})
    shutdown()
    return 0
