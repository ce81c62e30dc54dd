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

    from locmoe.cli.generate import torch_server
    from locmoe.inference.profile import DeviceProfile

    server = torch_server()
    device = server.device_type(args.device)
    defaults = SHAPES["cpu" if device == "cpu" else "accelerator"]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    rows = _ints(args.rows, "--rows")
    W = int(os.environ.get("WORLD_SIZE", 1))
    if args.experts % W:
        raise InferenceError(f"--experts {args.experts} is not divisible by the {W} launched processes")
    start = None

    def progress(text: str) -> None:
        nonlocal start
        start = time.perf_counter() if start is None else start  # the clock starts at the first line, once set up
        print(f"calibrate [{time.perf_counter() - start:5.1f} s] {text}", flush=True)

    written = server.calibrate(
        args.experts, args.d_model, args.d_expert, rows, args.reps, args.device, args.dtype, args.out, progress
    )
    if written is not None:  # the first process, which wrote the profile
        profile = DeviceProfile.load(written)
        a2a = profile.all_to_all
        print(
            f"calibrated {profile.device} ({profile.dtype}, {W} process(es)): grouped "
            f"{1e-12 / profile.grouped.s_per_flop:.3g} TFLOP/s, dense {1e-12 / profile.dense.s_per_flop:.3g} "
            f"TFLOP/s, copy {profile.copy.bandwidth_gbps:.3g} GB/s"
            + (f", all-to-all {a2a.bandwidth_gbps:.3g} GB/s + {a2a.latency_s * 1e6:.3g} us" if a2a else "")
            + f"; median fit errors {', '.join(f'{k} {v:.1%}' for k, v in profile.fit_error.items())}"
            + f" -> {args.out}"
        )
    server.shutdown()
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
    from locmoe.cli.generate import serving_options, torch_server
    from locmoe.report import format_table, write_json

    server = torch_server()
    lengths = _ints(args.lengths, "--lengths")
    opts = serving_options(server, args)
    model = server.load(args.checkpoint, args.router, args.device, args.dtype, args.capacity, opts)
    if max(lengths) > model.context:
        raise InferenceError(f"--lengths {max(lengths)} is longer than the model's context of {model.context}")
    rows = server.prefill(model, opts, lengths, args.batch, args.reps)
    if model.rank == 0:
        print(format_table(rows, ["length", "mode", "chunks", "tokens", "ms", "tokens_per_s"], ".4g"))
        for line in verdicts(rows):
            print(line)
        if args.json:
            write_json(args.json, {"rows": rows, "world_size": model.world_size})
    server.shutdown()
    return 0
