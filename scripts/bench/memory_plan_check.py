"""The memory plan (``locmoe plan memory``, ``locmoe/planning/rank_memory.py``) against what training allocates.

    python scripts/bench/memory_plan_check.py [--device cpu|cuda] [--out bench_results/memory_plan_check.json]

CPU (the default): 4 and 8 gloo ranks (torchrun) at reduced sizes, each ``parallel.shard`` mode, two layouts
(the experts over every rank: nothing to shard them over; EP 2: each expert sharded over the W / 2 ranks that
hold it). Per rank, after two steps: this rank's parameter bytes (a sharded tensor's local shard) and AdamW's
state bytes, against the plan and against the replicated run's bytes ÷ the group size (dense ÷ W, experts ÷
W / EP); the bytes autograd keeps over one forward (saved-tensor hooks; unique storages, parameters left out)
against the plan's; and the highest point of a third step above what it starts with (the profiler's
allocation events) against the plan's peak above the parameters and moments.

CUDA (``--device cuda``): pangu_sigma_small and pangu_sigma_1b as configured (batch, sequence, grad_accum,
bf16 autocast, compiled blocks, the CUDA-graphed step of ``backends.torch.train.make_stepper``), with and
without activation checkpointing, each in a fresh process on one GPU (a row run after another in the same
process counts what the first left behind): ``torch.cuda.max_memory_allocated`` over the steps after the
first, against the plan's peak; ``max_memory_reserved``; what the process holds outside torch's allocator (the
plan's FRAMEWORK_BYTES); the bytes autograd keeps over one forward. Estimated 4-5 minutes on one H100 (four
fresh processes: building the weights, compiling, capturing the graph, 3 steps); ``--checkpointing off`` halves it.

``--smoke``: 2 gloo ranks and one row of the CUDA part on CPU, tiny sizes (the CI check that the script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from locmoe.config import load_config  # noqa: E402
from locmoe.planning.rank_memory import RankLayout, plan_rank_memory  # noqa: E402
from locmoe.report import format_table, write_json  # noqa: E402

MIB, GIB = 2**20, 2**30
QUIET = ["logging.progress=false", "logging.tensorboard=false", "export.at_end=false", "data.max_bytes=2000000"]
REDUCED = [  # the CPU ranks' model: 4 blocks (1 dense), 8 experts of d 128
    "model.d_model=128",
    "model.n_layers=4",
    "model.n_heads=4",
    "model.d_ff=384",
    "moe.d_expert=192",
    "moe.num_experts=8",
    "data.seq_len=128",
    "model.max_seq_len=128",
    "train.batch_size=2",
    "data.max_bytes=200000",
]
SMOKE = ["model.d_model=64", "model.n_heads=2", "model.d_ff=128", "moe.d_expert=64", "data.seq_len=32",
         "model.max_seq_len=32"]  # fmt: skip


# ------------------------------------------------------------------ measuring one process (torch from here on)
def saved_bytes(model, fn) -> int:
    """Bytes of the unique storages autograd saves while ``fn()`` runs, parameters left out."""
    import torch

    from backends.torch.sharding import local

    params = {local(p).untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        # a parameter, or a view of one (FSDP's gathered parameters are views of its all-gather buffer)
        if not isinstance(t, torch.nn.Parameter) and not isinstance(t._base, torch.nn.Parameter):
            st = t.untyped_storage()
            if st.data_ptr() not in params and st.nbytes():
                seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def cpu_step_peak(fn) -> int:
    """The highest point of CPU tensor allocations during ``fn()`` above where it started (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # the profiler's own records (private: kineto_results and a memory event's nbytes are not typed)
    kineto = prof.profiler.kineto_results  # pyright: ignore[reportOptionalMemberAccess]
    events = sorted((e.start_ns(), e.nbytes()) for e in kineto.events() if e.name() == "[memory]")  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
    now = top = 0
    for _, n in events:
        now += n
        top = max(top, now)
    return top


_CORPUS: dict = {}


def build(cfg):
    """What ``backends.torch.train.train`` builds, without its run directory: context, batches, model, AdamW."""
    import torch

    from backends.torch.distributed import init_distributed
    from backends.torch.optim import make_optimizer
    from backends.torch.train import Batches, build_model
    from locmoe.data import BatchSampler, load_corpus, load_tokenizer

    ctx = init_distributed(cfg.parallel)
    key = (cfg.data.max_bytes, cfg.moe.domains.num_domains)
    if key not in _CORPUS:  # every case of a launch reads the same text
        _CORPUS[key] = load_corpus(cfg.data, load_tokenizer(cfg.data.tokenizer), cfg.moe.domains.num_domains)
    corpus = _CORPUS[key]
    sampler = BatchSampler(
        corpus, cfg.data.seq_len, cfg.train.batch_size, rank=ctx.rank, world=ctx.world_size, seed=cfg.data.seed
    )
    batches = Batches(sampler, ctx.device)
    torch.manual_seed(cfg.train.seed + ctx.rank)
    model = build_model(cfg, ctx)
    batches.place_by(model, cfg, ctx)
    return ctx, batches, model, make_optimizer(model, cfg.train)


def local_bytes(model, optimizer) -> dict:
    """This rank's bytes of dense and expert parameters (local shards) and of AdamW's state."""
    from backends.torch.sharding import local
    from locmoe.model_spec import is_expert_param

    out = {"dense": 0, "experts": 0, "optimizer": 0, "state_tensors": 0}
    for name, p in model.named_parameters():
        t = local(p)
        out["experts" if is_expert_param(name) else "dense"] += t.numel() * t.element_size()
    for state in optimizer.state.values():
        for v in state.values():
            t = local(v)
            out["optimizer"] += t.numel() * t.element_size()
            out["state_tensors"] += 1
    return out


def one_forward_backward(model, cfg, batches, step: int):
    from backends.torch.train import loss_of

    def run():
        lm, aux, _ = loss_of(model, cfg, *batches.get(step))
        (lm + aux).backward()

    return run


def rank_part(args) -> None:
    """Under torchrun: every case of ``--cases`` in turn (one torch and gloo start-up for all of them)."""
    from backends.torch.train import train_step

    cases = json.loads(Path(args.cases).read_text())
    results = []
    for case in cases:
        t0 = time.perf_counter()
        cfg = load_config(case["config"], case["set"])
        ctx, batches, model, opt = build(cfg)
        print(f"{case['name']}: built in {time.perf_counter() - t0:.1f} s", flush=True)
        train_step(model, opt, cfg, ctx, batches, 0)
        train_step(model, opt, cfg, ctx, batches, 1)
        row = {"case": case["name"], "rank": ctx.rank, **local_bytes(model, opt)}
        row["saved"] = saved_bytes(model, one_forward_backward(model, cfg, batches, 2))
        opt.zero_grad(set_to_none=True)
        row["step_peak"] = cpu_step_peak(lambda: train_step(model, opt, cfg, ctx, batches, 3))
        results.append(row)
        print(f"{case['name']}: measured in {time.perf_counter() - t0:.1f} s", flush=True)
    Path(args.part_out, f"rank{ctx.rank}.json").write_text(json.dumps(results))


def gpu_row(args) -> None:
    """One configuration in this fresh process: peak, reserved, outside-allocator and saved bytes."""
    import torch

    from backends.torch.train import make_stepper

    cfg = load_config(args.config, [*QUIET, f"train.activation_checkpointing={args.ac}", *args.set])
    ctx, batches, model, opt = build(cfg)
    cuda = ctx.device.type == "cuda"
    step = make_stepper(model, opt, cfg, ctx, batches, log=print)
    t0 = time.perf_counter()
    step(0)  # compiles, and makes AdamW's moments: the steps after it are the steady state
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for i in range(1, args.steps):
        step(i)
    sync()
    row = {"config": cfg.name, "checkpointing": args.ac, "device": str(ctx.device), "seconds": time.perf_counter() - t0}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        row.update(
            peak=torch.cuda.max_memory_allocated(),
            reserved_peak=torch.cuda.max_memory_reserved(),
            at_rest=torch.cuda.memory_allocated(),
            outside_allocator=total - free - torch.cuda.memory_reserved(),
            name=torch.cuda.get_device_name(),
        )
    else:
        row["step_peak"] = cpu_step_peak(lambda: step(args.steps))
    opt.zero_grad(set_to_none=True)
    row["saved"] = saved_bytes(model, one_forward_backward(model, cfg, batches, args.steps + 1))
    Path(args.row_out).write_text(json.dumps(row))


# ------------------------------------------------------------------ the driver: launch, plan, compare
def launch(cmd: list, nproc: int = 0) -> None:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([*(prefix if nproc else [sys.executable]), *map(str, cmd)], cwd=ROOT, env=env, text=True,
                          capture_output=True)  # fmt: skip
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def rank_cases(world: int, smoke: bool) -> list[dict]:
    nodes, G = 2, world // 2
    base = [*QUIET, *REDUCED, *(SMOKE if smoke else []), f"parallel.nodes={nodes}", f"parallel.devices_per_node={G}"]
    base += ["parallel.device=cpu", "train.eval_every=0"]
    layouts = {"EP=W": [], "EP=2": ["parallel.expert_parallel_size=2"]}
    shards = ("none", "full") if smoke else ("none", "optimizer", "full")
    return [
        {
            "name": f"{lay} {shard}",
            "layout": lay,
            "shard": shard,
            "config": "tiny_cpu",
            "set": [*base, *extra, f"parallel.shard={shard}"],
        }  # fmt: skip
        for lay, extra in (list(layouts.items())[1:] if smoke else layouts.items())
        for shard in shards
    ]


def cpu_part(args) -> list[dict]:
    rows = []
    for world in (2,) if args.smoke else (4, 8):
        cases = rank_cases(world, args.smoke)
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "cases.json").write_text(json.dumps(cases))
            launch([Path(__file__), "--part", "ranks", "--cases", Path(tmp, "cases.json"), "--part-out", tmp], world)
            measured = [r for i in range(world) for r in json.loads(Path(tmp, f"rank{i}.json").read_text())]
        rows += compare_ranks(cases, measured, world)
    return rows


def compare_ranks(cases: list[dict], measured: list[dict], world: int) -> list[dict]:
    rows = []
    for case in cases:
        mine = [m for m in measured if m["case"] == case["name"]]
        replicated = [m for m in measured if m["case"] == f"{case['layout']} none"]
        cfg = load_config(case["config"], case["set"])
        layout = RankLayout.of(cfg, world, world // 2)
        plan = plan_rank_memory(cfg, layout, case["shard"], device="cpu")
        params = max(m["dense"] + m["experts"] for m in mine)
        ideal = max(m["dense"] for m in replicated) / world + max(m["experts"] for m in replicated) / layout.expert_dp
        state = max(m["optimizer"] for m in mine)
        counters = max(m["state_tensors"] for m in mine) // 3 * 4  # AdamW's step: a 4-byte tensor per parameter
        sharded = case["shard"] != "none"
        at_rest = plan.parameters + plan.optimizer + (plan.gradients if cfg.train.grad_accum > 1 else 0)
        rows.append(
            {
                "ranks": world,
                "layout": case["layout"],
                "shard": case["shard"],
                "params_KiB": params / 1024,
                "plan_params_KiB": plan.parameters / 1024,
                "params_vs_plan": params / plan.parameters,
                "params_vs_replicated_over_dp": params / ideal if sharded else None,
                "adamw_KiB": state / 1024,
                "plan_adamw_KiB": (plan.optimizer + counters) / 1024,
                "adamw_vs_plan": state / (plan.optimizer + counters),
                "saved_MiB_max": max(m["saved"] for m in mine) / MIB,
                "plan_saved_MiB": plan_saved(cfg, plan) / MIB,
                "step_peak_MiB_max": max(m["step_peak"] for m in mine) / MIB,
                "plan_step_peak_MiB": (plan.peak - at_rest) / MIB,
            }
        )
    return rows


def plan_saved(cfg, plan) -> int:
    """What the saved-tensor hooks see: the activations, the weight copies and the loss's log-probabilities."""
    return plan.activations + plan.compute_weights + 4 * cfg.model.vocab_size * cfg.train.batch_size * cfg.data.seq_len


def cuda_part(args) -> list[dict]:
    configs = ["tiny_cpu"] if args.smoke else args.configs.split(",")
    acs = ["false"] if args.smoke else [{"off": "false", "on": "true"}[a] for a in args.checkpointing.split(",")]
    extra = ["parallel.device=cpu", "parallel.nodes=1", "parallel.devices_per_node=1", *SMOKE] if args.smoke else []
    rows = []
    for config in configs:
        for ac in acs:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp, "row.json")
                cmd = [Path(__file__), "--part", "gpu-row", "--config", config, "--ac", ac, "--row-out", out]
                launch([*cmd, "--steps", args.steps, *(["--set", *extra] if extra else [])])
                m = json.loads(out.read_text())
            cfg = load_config(config, [*QUIET, f"train.activation_checkpointing={ac}", *extra])
            device = "cuda" if "peak" in m else "cpu"
            plan = plan_rank_memory(cfg, RankLayout.of(cfg, 1), "none", device=device)
            row = {"config": config, "checkpointing": "on" if ac == "true" else "off", "device": m.get("name", "cpu")}
            if device == "cuda":
                row.update(
                    peak_GiB=m["peak"] / GIB,
                    plan_peak_GiB=plan.peak / GIB,
                    peak_vs_plan=m["peak"] / plan.peak,
                    reserved_GiB=m["reserved_peak"] / GIB,
                    outside_allocator_GiB=m["outside_allocator"] / GIB,
                    at_rest_GiB=m["at_rest"] / GIB,
                    plan_at_rest_GiB=(plan.parameters + plan.optimizer) / GIB,
                )
            else:
                at_rest = plan.parameters + plan.optimizer
                row.update(step_peak_MiB=m["step_peak"] / MIB, plan_step_peak_MiB=(plan.peak - at_rest) / MIB)
            row.update(saved_GiB=m["saved"] / GIB, plan_saved_GiB=plan_saved(cfg, plan) / GIB, seconds=m["seconds"])
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="gloo ranks on CPU, or one GPU")
    p.add_argument("--smoke", action="store_true", help="2 gloo ranks and one CUDA-part row on CPU, tiny sizes")
    p.add_argument("--configs", default="pangu_sigma_1b,pangu_sigma_small", help="--device cuda: the jobs")
    p.add_argument("--checkpointing", default="off,on", help="--device cuda: activation checkpointing off, on or both")
    p.add_argument("--steps", type=int, default=3, help="--device cuda: steps per row (the first is not measured)")
    p.add_argument("--out", default="bench_results/memory_plan_check.json")
    p.add_argument("--part", choices=["driver", "ranks", "gpu-row"], default="driver", help=argparse.SUPPRESS)
    p.add_argument("--cases", help=argparse.SUPPRESS)
    p.add_argument("--part-out", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--ac", help=argparse.SUPPRESS)
    p.add_argument("--row-out", help=argparse.SUPPRESS)
    p.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part == "ranks":
        return rank_part(args)
    if args.part == "gpu-row":
        return gpu_row(args)
    result = {"device": args.device, "smoke": args.smoke}
    if args.device == "cpu":
        result["ranks"] = cpu_part(args)
        print("per-rank bytes on gloo ranks (max over ranks) against the plan (locmoe/planning/rank_memory.py)")
        print(format_table(result["ranks"], floatfmt=".3g"))
    if args.device == "cuda" or args.smoke:
        result["gpu"] = cuda_part(args)
        print("one device: measured against the plan")
        print(format_table(result["gpu"], floatfmt=".3g"))
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
