"""The fast training path (compiled blocks, fused MoE kernels, the CUDA-graphed step) against the eager one, in
lock step: both start from the same weights, take the same batch each step, and after every step the fast
model and optimizer are set to the reference's state (copied in place, so the captured graph keeps its
buffers). Each step's loss then compares one step of each path from one state, over a real trajectory; a
free-running curve (``train_throughput.py --curve``) compares two trajectories, which a router's discrete
choices make drift apart even between two runs of the same path. The pair ``eager:eager`` steps a second
eager model beside the first: the spread of the reference itself (bf16 atomics in the backward).
As ``tests/training/test_fast_path.py`` does on CPU in fp32, here on the GPU in bf16. One table, one JSON.

    python scripts/bench/fast_vs_eager_lockstep.py [--row locmoe] [--steps 100] [--pairs fast:eager,eager:eager]
                                                   [--out bench_results/fast_vs_eager_lockstep.json]
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import ROOT, corpus_for, job  # noqa: E402
from train_user_path import graph_state  # noqa: E402

from backends.torch.distributed import init_distributed  # noqa: E402
from backends.torch.optim import make_optimizer  # noqa: E402
from backends.torch.train import Batches, build_model, make_stepper  # noqa: E402
from locmoe.data import BatchSampler  # noqa: E402
from locmoe.report import format_table, write_json  # noqa: E402


class TrainingPath:
    """One training path of a row: its model, optimizer and ``step(i)`` (the job's own stepper)."""

    def __init__(self, args, row: str):
        cfg = job(args, row)
        ctx = init_distributed(cfg.parallel)
        sampler = BatchSampler(
            corpus_for(cfg), cfg.data.seq_len, cfg.train.batch_size, rank=0, world=1, seed=cfg.data.seed
        )
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg, ctx)
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.lines: list[str] = []  # what the stepper says (why a step stays eager)
        self.step = make_stepper(self.model, self.optimizer, cfg, ctx, Batches(sampler, ctx.device), self.lines.append)
        self.device = torch.device(ctx.device)

    def graph(self) -> str:
        """``captured``, ``capture failed: ...`` or ``eager ...`` (train_user_path.graph_state)."""
        return graph_state(self.step, self.lines, self.device)

    @torch.no_grad()
    def take_state_of(self, other: "TrainingPath") -> None:
        """``other``'s parameters, buffers (router state) and AdamW moments, copied into this path's tensors."""
        mine = [*self.model.parameters(), *self.model.buffers()]
        theirs = [*other.model.parameters(), *other.model.buffers()]
        assert len(mine) == len(theirs), (len(mine), len(theirs))
        for a, b in zip(mine, theirs):
            a.copy_(b)
        params = lambda o: [p for g in o.param_groups for p in g["params"]]  # noqa: E731
        for a, b in zip(params(self.optimizer), params(other.optimizer)):
            for key, value in other.optimizer.state.get(b, {}).items():
                if torch.is_tensor(value):
                    self.optimizer.state[a][key].copy_(value)
                else:
                    self.optimizer.state[a][key] = value


def lockstep(args, pair: str) -> dict:
    """``args.steps`` steps of the pair's two paths ("fast" or a variant of train_throughput's VARIANTS), the
    first set to the second's (the reference's) state before each step; per step :func:`one_step`'s
    differences."""
    variant = lambda name: args.row if name == "fast" else f"{args.row}-{name}"  # noqa: E731
    tested, against = pair.split(":")
    fast, ref = TrainingPath(args, variant(tested)), TrainingPath(args, variant(against))
    fast.take_state_of(ref)
    steps = []
    for i in range(args.steps):
        steps.append(one_step(fast, ref, i))
        fast.take_state_of(ref)
    graphs = {tested: fast.graph(), against: ref.graph()}
    del fast, ref
    gc.collect()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    out = {"row": args.row, "path": tested, "against": against, "steps": args.steps}
    out.update(graph=graphs[tested], reference_graph=graphs[against], ref_loss_at_end=steps[-1]["ref_loss"])
    for key in ("loss", "grad_norm", "update"):
        diffs = [s[f"{key}_rel_diff"] for s in steps]
        out.update({f"{key}_max": max(diffs), f"{key}_mean": sum(diffs) / len(diffs), f"{key}_at_end": diffs[-1]})
    return out | {"per_step": steps}


def one_step(fast: TrainingPath, ref: TrainingPath, i: int) -> dict:
    """One step of each from one state: the relative differences of the loss (the forward), the gradient norm
    (the backward) and the update (the optimizer: |fast's new weights - ref's| / |ref's new - old weights|)."""
    params = lambda t: list(t.model.parameters())  # noqa: E731
    old = [p.detach().clone() for p in params(ref)]
    fa, fb = fast.step(i), ref.step(i)
    (la, ga), (lb, gb) = (float(fa[0]), float(fa[-1])), (float(fb[0]), float(fb[-1]))
    with torch.no_grad():
        apart = sum(float((a - b).float().pow(2).sum()) for a, b in zip(params(fast), params(ref)))
        moved = sum(float((b - o).float().pow(2).sum()) for b, o in zip(params(ref), old))
    return {
        "ref_loss": lb,
        "loss_rel_diff": abs(la - lb) / abs(lb),
        "grad_norm_rel_diff": abs(ga - gb) / abs(gb),
        "update_rel_diff": (apart / moved) ** 0.5 if moved else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "pangu_sigma_small.yaml"))
    p.add_argument("--row", default="locmoe", help="locmoe, gshard, switch or dense (train_throughput's rows)")
    p.add_argument(
        "--pairs",
        default="fast:eager,eager:eager",
        help="PATH:REFERENCE pairs stepped together (fast, eager, nograph); eager:eager is the reference's spread",
    )
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--max-bytes", type=int, default=3_000_000)
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--smoke", action="store_true", help="tiny config on CPU, 3 steps: checks the script runs")
    p.add_argument("--out", default="bench_results/fast_vs_eager_lockstep.json")
    args = p.parse_args()
    args.force_balance = False  # train_throughput.job reads it
    if args.smoke:
        args.config = str(ROOT / "configs" / "tiny_cpu.yaml")
        args.set += ["parallel.device=cpu", "parallel.nodes=1", "parallel.devices_per_node=1"]
        args.batch, args.seq, args.steps, args.max_bytes = 2, 64, 3, 60_000
    rows = [lockstep(args, pair) for pair in args.pairs.split(",")]
    cols = [
        "row",
        "path",
        "against",
        "graph",
        "steps",
        "loss_max",
        "loss_mean",
        "grad_norm_max",
        "update_max",
        "update_mean",
    ]
    print(format_table([{c: r[c] for c in cols} for r in rows]))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
    meta = {"device": device, "torch": torch.__version__, "config": Path(args.config).name, "sets": args.set}
    print(f"wrote {write_json(args.out, {**meta, 'batch': args.batch, 'seq': args.seq, 'rows': rows})}")


if __name__ == "__main__":
    main()
