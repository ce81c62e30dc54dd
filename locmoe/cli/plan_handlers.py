"""What each ``locmoe plan`` subcommand does: read its inputs, plan, print tables, write plans.

Each handler returns the JSON payload of what it printed (``--json`` writes it).
"""

from __future__ import annotations

import argparse

from locmoe.planning.errors import PlanningError
from locmoe.report import format_table
from locmoe.text_files import read_json


def _trace(args: argparse.Namespace):
    from locmoe.placement.trace import expected_fingerprint, load_trace

    trace = load_trace(args.trace, expect=expected_fingerprint(args.expect))
    if args.max_tokens:
        trace = trace.head(args.max_tokens)
    print(
        f"trace {args.trace}: {trace.num_tokens} tokens, {trace.num_layers} MoE layers {trace.moe_layers}, "
        f"E={trace.num_experts}, k={trace.top_k}, router {trace.fingerprint['router_kind']}"
    )
    return trace


def affinity(args: argparse.Namespace) -> dict:
    from locmoe.placement.affinity import affinity_stats

    trace = _trace(args)
    g = trace.num_experts // args.devices if args.devices else 1
    rows = [s.as_row() for s in affinity_stats(trace, g)]
    print(format_table(rows, floatfmt=".3f"))
    return {"rows": rows}


def place(args: argparse.Namespace) -> dict:
    from locmoe.placement.compare import compare_placements
    from locmoe.placement.table import to_placement_table

    trace = _trace(args)
    rows, plan = compare_placements(
        trace, args.devices, args.devices_per_node or None, args.method, args.time_limit, args.load_limit, args.seed
    )
    print(
        f"expected cross-device hops per token per layer transition on {args.devices} devices "
        "(coherent: share of next-layer copies computed where the token already is)"
    )
    print(format_table(rows, floatfmt=".4f"))
    if trace.num_experts == args.devices:
        print(_one_expert_per_device(trace.num_experts, rows))
    table = to_placement_table(plan.assignment, args.devices, trace.moe_layers, f"exflow-{plan.method}")
    _save(table, args.out)
    return {"rows": rows, "placement": table.to_dict()}


def replicate(args: argparse.Namespace) -> dict:
    from locmoe.export.manifest import PlacementTable
    from locmoe.placement.grace import plan_grace
    from locmoe.placement.table import from_placement_table, to_placement_table

    trace = _trace(args)
    base = None
    if args.base:
        base, _ = from_placement_table(PlacementTable.load(args.base).validate(trace.num_experts))
    plan = plan_grace(
        trace,
        args.devices,
        args.slots,
        args.threshold,
        args.grouping,
        args.token_placement,
        base=base,
        time_limit=args.time_limit,
        seed=args.seed,
    )
    print(
        f"GRACE on {args.devices} devices, {args.slots} extra slots each, threshold {args.threshold}, grouping "
        f"{plan.grouping}, tokens at their {args.token_placement} device (max/mean device load; remote: share "
        "of copies leaving their device)"
    )
    print(format_table(plan.stats, floatfmt=".3f"))
    table = to_placement_table(plan.assignment, args.devices, trace.moe_layers, f"grace-{plan.grouping}", plan.layers)
    if _save(table, args.out):
        from locmoe.placement.eplb import eplb_arrays, write_eplb  # the same placement in EPLB's layout

        print(
            "wrote {} and {} (EPLB arrays for vLLM / SGLang)".format(
                *write_eplb(eplb_arrays(plan.layers, trace.moe_layers), args.out)
            )
        )
    return {"rows": plan.stats, "placement": table.to_dict()}


def _one_expert_per_device(experts: int, rows: list[dict]) -> str:
    """Why the table ties when there are as many devices as experts (rows: round_robin, contiguous, greedy,
    exflow)."""
    text = (
        f"note: {experts} experts on {experts} devices is one expert per device: round_robin and contiguous are "
        "the same map (expert e on device e), hence their tie; a placement can then only choose which expert of "
        "the next layer shares each expert's device"
    )
    if abs(rows[2]["hops"] - rows[-1]["hops"]) < 1e-12:
        text += ", where greedy finds what the integer program finds"
    return text + f"; with fewer devices than experts (e.g. --devices {max(experts // 2, 1)}) there is more to gain"


def _save(table, out: str | None) -> bool:
    """Write the plan only where ``--out`` says (it is also in --json's payload)."""
    if not out:
        print("placement not written (pass --out FILE to write it)")
        return False
    print(f"wrote {table.save(out)}")
    return True


def deploy(args: argparse.Namespace) -> dict:
    from locmoe.planning.compare_deploy import compare_deployments
    from locmoe.planning.profiles import load_profiles, parse_budget

    kinds, model, _ = load_profiles(args.profile)
    result = compare_deployments(kinds, model, parse_budget(args.budget), args.requests, args.rate or None, args.seed)
    for title, rows in result["tables"].items():
        print(title)
        print(format_table(rows, floatfmt=".3f"))
    print(f"planner + earliest-completion / naive + round-robin: {result['speedup']:.2f}x output tokens/s")
    return result


def simulate(args: argparse.Namespace) -> dict:
    from locmoe.planning.cluster_sim import Calibration, MoEModel
    from locmoe.planning.router_stats import project_routers

    cal = Calibration()
    if args.calibration:
        read_json(args.calibration, "--calibration", PlanningError)  # UTF-8, JSON and an object, or one line
        cal = Calibration.from_json(args.calibration)
    model = MoEModel(
        args.d_model, args.d_expert, args.experts, 2, args.layers, tokens_per_device=args.tokens_per_device
    )
    stats = _read_stats(args.stats) if args.stats else None
    rows = project_routers(model, cal, args.nodes, args.devices_per_node, stats, args.overlap_chunks, args.seed)
    print(
        f"projected training step on {args.nodes} x {args.devices_per_node} devices: d={model.d_model}, "
        f"f={model.d_expert}, E={model.num_experts}, {model.moe_layers} MoE layers, {model.tokens_per_device} "
        f"tokens/device; calibration: {cal.source}"
    )
    print(format_table(rows, floatfmt=".3f"))
    return {"rows": rows, "calibration": cal.to_dict()}


def _read_stats(path: str) -> dict:
    """{system: RoutingStats} from a JSON file of {system: {on_rank, in_node, cross_node, ...}}."""
    from locmoe.planning.cluster_sim import RoutingStats

    raw = read_json(path, "--stats", PlanningError)
    try:
        return {name: RoutingStats(**fields) for name, fields in raw.items()}
    except TypeError as err:  # a system's entry not an object, or with unknown fields
        raise PlanningError(
            f"--stats {path}: {err}; expected {{system: {{on_rank, in_node, cross_node, dropped, max_load}}}}}}}}"
        ) from None


def memory(args: argparse.Namespace) -> dict:
    """Per-device bytes of training the job on ``--devices`` ranks, by part, for each shard mode with and without
    activation checkpointing; then the largest pangu_sigma-shaped model that fits (``locmoe.planning``)."""
    from locmoe.config import load_config
    from locmoe.config.schema import SHARD_MODES
    from locmoe.planning import model_family
    from locmoe.planning.memory_plan import parameter_count
    from locmoe.planning.rank_memory import ALLOCATOR_SLACK, FRAMEWORK_BYTES, RankLayout, plan_rank_memory
    from locmoe.planning.saved_activations import Execution

    sets = list(args.set)
    if args.seq_len:
        sets += [f"data.seq_len={args.seq_len}", f"model.max_seq_len={args.seq_len}"]
    cfg = load_config(args.config, sets)
    layout = RankLayout.of(cfg, args.devices, args.devices_per_node)
    budget = int(args.gpu_gib * GIB)
    ex = Execution.of(cfg)
    params = parameter_count(cfg, cfg.moe.num_experts)
    E, per = cfg.moe.num_experts, cfg.moe.num_experts // layout.ep
    print(
        f"{cfg.name} on {args.devices} device(s) of {args.gpu_gib:g} GiB: {params / 1e9:.3g} B parameters, EP "
        f"{layout.ep} ({per} of {E} experts per device, {layout.expert_dp} cop{'y' if layout.expert_dp == 1 else 'ies'}"
        f" of each), {cfg.train.batch_size} x {cfg.data.seq_len} tokens per device per micro-batch (grad_accum "
        f"{cfg.train.grad_accum}), {'bf16 autocast' if ex.compute_bytes == 2 else 'fp32'}, "
        f"{'compiled' if ex.compiled else 'eager'} blocks"
    )
    modes = [args.shard] if args.shard else list(SHARD_MODES)
    if layout.world == 1 and modes != ["none"]:
        print("one device: parallel.shard has nothing to shard, every mode is the row of 'none'")
        modes = ["none"]
    rows = []
    for shard in modes:
        for ac in (False, True):
            plan = plan_rank_memory(cfg, layout, shard, ac)
            rows.append({"shard": shard, "checkpointing": "on" if ac else "off", **plan.parts()})
    print(
        "GiB per device, each part at its own largest; peak: the step's largest moment (what "
        f"torch.cuda.max_memory_allocated reports); needs: peak + {FRAMEWORK_BYTES / GIB:g} GiB (CUDA context, "
        f"cuBLAS/NCCL buffers) + {ALLOCATOR_SLACK:.0%} of the peak (allocator slack)"
    )
    print(format_table([_gib_row(r, budget) for r in rows], floatfmt=".2f"))
    fits = model_family.largest_per_rung(cfg, args.devices, budget, args.devices_per_node)
    best = model_family.largest_member(fits)
    where = f"{args.devices} x {args.gpu_gib:g} GiB"
    if best is None:
        print(f"no pangu_sigma-shaped model of the family fits {where} (planned)")
    else:
        print(
            f"largest pangu_sigma-shaped model that fits {where} (planned): d_model {best.d_model}, {best.n_layers} "
            f"layers, {best.num_experts} experts: {best.parameters / 1e9:.3g} B parameters ({best.active / 1e9:.3g} B "
            f"active), shard {best.shard}, activation checkpointing {'on' if best.checkpointing else 'off'}, "
            f"{best.memory.needs / GIB:.1f} GiB per device"
        )
        print("the most experts that fit at each width x depth (locmoe/planning/model_family.py):")
        print(format_table([f.row() for f in fits], floatfmt=".3g"))
    return {
        "job": cfg.name,
        "devices": args.devices,
        "gpu_gib": args.gpu_gib,
        "layout": {"world": layout.world, "ep": layout.ep, "expert_dp": layout.expert_dp},
        "framework_bytes": FRAMEWORK_BYTES,
        "allocator_slack": ALLOCATOR_SLACK,
        "rows": rows,
        "largest": None if best is None else best.row(),
        "family": [f.row() for f in fits],
    }


GIB = 1 << 30
_MEMORY_COLUMNS = (
    "parameters",
    "gradients",
    "optimizer",
    "gathered",
    "compute_weights",
    "activations",
    "logits",
    "all_to_all",
    "transient",
    "peak",
    "needs",
)


def _gib_row(row: dict, budget: int) -> dict:
    out = {"shard": row["shard"], "checkpointing": row["checkpointing"]}
    out.update({name.replace("_", " "): row[name] / GIB for name in _MEMORY_COLUMNS})
    out["fits"] = "yes" if row["needs"] <= budget else "no"
    return out
