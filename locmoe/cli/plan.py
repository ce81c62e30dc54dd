"""``locmoe plan``: expert placement and deployment planning.

locmoe plan affinity  TRACE                      inter-layer affinity strength per layer pair
locmoe plan place     TRACE --devices D [--out F]   ExFlow placement (a PlacementTable, written to F if given)
locmoe plan replicate TRACE --devices D [--out F]   GRACE grouping + replicas (likewise)
locmoe plan deploy    --budget h200=8,...        heterogeneous deployment + scheduler simulation
locmoe plan simulate  --nodes 16 --devices-per-node 8   projected step time, LocMoE vs baselines
locmoe plan memory    JOB --devices N --gpu-gib G     per-device bytes of training JOB, and the largest model that fits

``--json PATH`` writes the printed tables to a new file, or over a previous ``locmoe plan`` JSON; never over a
file it did not write.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from locmoe.cli.args import add_set_argument, float_in, int_at_least

_count = int_at_least(1)  # devices, nodes, experts, sizes: at least one
_natural = int_at_least(0)  # 0 means "all" / "off" where the help says so
_seconds = float_in(gt=0)


def _trace_args(q: argparse.ArgumentParser, devices: bool = True) -> None:
    q.add_argument("trace", help="routing trace (.npz written by locmoe.placement.trace.TraceWriter)")
    q.add_argument(
        "--expect",
        default="",
        metavar="EXPORT|JSON",
        help="the model the trace must come from: a router export directory, its manifest.json, or a JSON fingerprint",
    )
    q.add_argument("--max-tokens", type=_natural, default=0, help="use only the first N tokens (0 = all)")
    if devices:
        q.add_argument("--devices", type=_count, required=True, help="devices D the experts are placed on")
        q.add_argument("--seed", type=_natural, default=0, help="seed of the randomised parts of the search")


def _args_affinity(q):
    _trace_args(q, devices=False)
    q.add_argument("--devices", type=_natural, default=0, help="if > 0, top_g_mass uses g = E / devices")


def _args_place(q):
    _trace_args(q)
    q.add_argument("--devices-per-node", type=_natural, default=0, help="if > 0, also report cross-node hops")
    q.add_argument(
        "--method",
        default="auto",
        choices=["auto", "ilp", "greedy", "brute_force"],
        help="placement search: the integer program, greedy, exhaustive (tiny cases), or auto",
    )
    q.add_argument("--time-limit", type=_seconds, default=30.0, help="ILP time limit in seconds")
    q.add_argument(
        "--load-limit",
        type=float_in(ge=1),
        default=None,
        help="max device load as a factor of the mean (>= 1); default: no limit",
    )
    _out_arg(q, "")


def _out_arg(q: argparse.ArgumentParser, also: str) -> None:
    """--out: a plan is written only where the user asks (two commands never overwrite one default file)."""
    q.add_argument(
        "--out", default=None, metavar="FILE", help=f"write the PlacementTable{also} to FILE (default: write nothing)"
    )


def _args_replicate(q):
    _trace_args(q)
    q.add_argument("--slots", type=_natural, default=2, help="extra expert slots per device (memory budget)")
    q.add_argument("--threshold", type=float_in(ge=1), default=1.05, help="balance threshold x mean device load")
    q.add_argument(
        "--grouping",
        default="exflow",
        choices=["exflow", "coactivation", "contiguous", "round_robin"],
        help="how experts are first grouped onto devices",
    )
    q.add_argument("--base", default="", help="start from this placement.json instead of a grouping (default: none)")
    q.add_argument(
        "--token-placement",
        default="home",
        choices=["home", "previous"],
        help="where a token is at dispatch: its data-parallel device or its previous expert's",
    )
    q.add_argument("--time-limit", type=_seconds, default=10.0, help="ILP time limit of the exflow grouping (s)")
    _out_arg(q, " (and its EPLB arrays beside it)")


def _args_deploy(q):
    q.add_argument(
        "--profile",
        default=None,
        help="JSON profile (device_kinds, model, workload); default: the "
        "built-in kinds (h200, h100, a100-40gb) and a Mixtral-8x7B-like model",
    )
    q.add_argument("--budget", default="h200=8,a100-40gb=16", help="devices per kind, e.g. h200=8,h100=8")
    q.add_argument("--requests", type=_count, default=1500, help="requests in the simulated stream")
    q.add_argument("--rate", type=float_in(ge=0), default=0.0, help="arrivals per second (0 = all at t=0)")
    q.add_argument("--seed", type=_natural, default=0, help="seed of the simulated request stream")


def _args_simulate(q):
    q.add_argument(
        "--calibration",
        default=None,
        help="JSON calibration (fields of Calibration); default: the numbers measured on 2xH200",
    )
    q.add_argument("--stats", default=None, help="JSON {system: RoutingStats fields}; default: the reference router")
    q.add_argument("--nodes", type=_count, default=16, help="nodes of the simulated cluster")
    q.add_argument("--devices-per-node", type=_count, default=8, help="devices per node")
    q.add_argument("--experts", type=_count, default=128, help="experts per MoE layer (E)")
    q.add_argument("--d-model", type=_count, default=2048, help="hidden size d")
    q.add_argument("--d-expert", type=_count, default=1408, help="hidden size of each expert FFN")
    q.add_argument("--layers", type=_count, default=24, help="MoE layers")
    q.add_argument("--tokens-per-device", type=_count, default=8192, help="tokens per device per step")
    q.add_argument("--overlap-chunks", type=_count, default=1, help="LocMoE's compute/all-to-all overlap chunks")
    q.add_argument("--seed", type=_natural, default=0, help="seed of the simulated routing")


def _args_memory(q):
    from locmoe.config.schema import SHARD_MODES

    q.add_argument("config", metavar="JOB", help="the training job: a YAML file or a shipped config's name")
    q.add_argument("--devices", type=_count, required=True, help="devices (ranks) N the job trains on")
    q.add_argument("--gpu-gib", type=float_in(gt=0), required=True, help="memory G of each device in GiB")
    q.add_argument(
        "--shard",
        default=None,
        choices=SHARD_MODES,
        help="plan only this parallel.shard mode (default: every mode)",
    )
    q.add_argument("--seq-len", type=int_at_least(2), default=None, help="tokens per sequence (default: data.seq_len)")
    q.add_argument("--devices-per-node", type=_count, default=8, help="devices per node (the EP groups' nodes)")
    add_set_argument(q, example="train.batch_size=8 parallel.expert_parallel_size=16")


SUBCOMMANDS = {
    "affinity": (
        "inter-layer expert affinity of a routing trace: P(expert j at l+1 | expert i at l) and its strength",
        _args_affinity,
    ),
    "place": (
        "ExFlow placement: the integer program (HiGHS) over expert->device maps minimising cross-device "
        "hops; writes a PlacementTable",
        _args_place,
    ),
    "replicate": (
        "GRACE grouping + replication of hot experts under a slot budget + locality-aware replica "
        "routing; writes a PlacementTable with replicas",
        _args_replicate,
    ),
    "deploy": (
        "heterogeneous deployment: best mix of instances under a device budget, and a scheduler "
        "simulation against a naive deployment",
        _args_deploy,
    ),
    "simulate": (
        "cluster simulator: projected training step time of LocMoE vs GShard/Switch on N x G devices",
        _args_simulate,
    ),
    "memory": (
        "memory plan of a training job: per-device bytes (parameters, gradients, AdamW, activations with and "
        "without checkpointing, all-to-all buffers) for each parallel.shard mode, and the largest "
        "pangu_sigma-shaped model that fits N devices of G GiB",
        _args_memory,
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT")
    sub.required = True
    for name, (text, add) in SUBCOMMANDS.items():
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("--json", default="", metavar="PATH", help="also write the printed tables to this JSON file")
        add(q)


def main(args: argparse.Namespace) -> int:
    from locmoe.atomic_io import WriteError
    from locmoe.cli import plan_handlers
    from locmoe.export.manifest import ExportError
    from locmoe.placement.errors import PlacementError
    from locmoe.placement.trace import TraceError
    from locmoe.planning.errors import PlanningError

    try:
        if args.json:
            check_json_target(args.json)  # before any work: a refusal leaves nothing half done
        out = getattr(plan_handlers, args.what)(args)
    except (TraceError, PlacementError, PlanningError, ExportError, WriteError) as err:
        print(f"locmoe plan {args.what}: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        from locmoe.report import write_json

        settings = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str)) or v is None}
        payload = {WRITTEN_BY: f"locmoe plan {args.what}", "args": settings, **out}
        print(f"wrote {write_json(args.json, payload)}")
    return 0


WRITTEN_BY = "written_by"  # the key that marks a JSON file as a previous ``locmoe plan --json``


def check_json_target(path: str) -> None:
    """``--json PATH`` is a new file or a previous ``locmoe plan`` JSON (its ``written_by`` says so); anything
    else is refused, so that the command never overwrites a file it did not write."""
    from locmoe.atomic_io import WriteError

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    try:
        previous = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        previous = None
    if not (isinstance(previous, dict) and str(previous.get(WRITTEN_BY, "")).startswith("locmoe plan")):
        raise WriteError(
            f"--json {path}: exists and is not a previous `locmoe plan` JSON; refusing to overwrite it: "
            "choose a new path"
        )
