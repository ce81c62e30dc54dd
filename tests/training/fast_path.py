"""The fast training path (torch.compile'd blocks) against the eager one, step by step: both models start
from the same weights, every step both take the same batch, and after each step the fast model is reset to
the eager model's weights, router state and optimiser state. Each step's loss and gradient norm therefore
compare one step of each path from the same state, over a real 20-step trajectory, without letting a
near-tie routing flip (a legitimate consequence of rounding) compound into a different run. Each step
also records whether both paths routed every copy the same way, and how many copies differ if not.

Used in one process by ``test_fast_path.py`` and by every rank of its torchrun launch (``python -m
tests.training.fast_path OUT.json``)."""

from __future__ import annotations

import json
import sys

STEPS = 20
SIZES = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=3",
    "model.dense_layers=1",
    "model.d_ff=64",
    "model.max_seq_len=32",
    "moe.num_experts=8",
    "moe.d_expert=16",
    "data.seq_len=32",
    "data.max_bytes=20000",
    "train.batch_size=2",
    "train.warmup_steps=2",
    f"train.steps={STEPS}",
    "moe.capacity.factor=1.0",
    "parallel.device=cpu",
    "parallel.nodes=2",
    "parallel.devices_per_node=2",
]


def cases() -> list[tuple[str, list[str]]]:
    """Every router and capacity mode of the MoE test cases (each once, whatever its dispatch scheme)."""
    from tests.moe_cases_common import CASES

    seen, out = set(), []
    for c in CASES:
        sets = [f"moe.router.kind={c['kind']}", f"moe.capacity.mode={c['mode']}", *c["extra"]]
        if c["kind"] == "hash" and c["mode"] == "bound" or tuple(sets) in seen:
            continue
        seen.add(tuple(sets))
        out.append((",".join(sets), sets))
    return out


def lockstep(sets: list[str]) -> list[dict]:
    """Per step: the eager and the fast path's lm loss, auxiliary objective and gradient norm."""
    import torch

    from backends.torch.distributed import init_distributed
    from backends.torch.optim import make_optimizer
    from backends.torch.train import Batches, build_model, train_step
    from locmoe.config import load_config
    from locmoe.data import BatchSampler, load_corpus, load_tokenizer

    cfgs = {
        name: load_config(overrides=[*SIZES, *sets, f"train.compile={name == 'fast'}"]) for name in ("eager", "fast")
    }
    cfg = cfgs["eager"]
    ctx = init_distributed(cfg.parallel)
    corpus = load_corpus(cfg.data, load_tokenizer("byte"), cfg.moe.domains.num_domains)
    ranks = ctx.layout.topology.world_size if ctx.emulated else 1
    batches = Batches(
        BatchSampler(
            corpus, cfg.data.seq_len, cfg.train.batch_size * ranks, rank=ctx.rank, world=ctx.world_size, seed=0
        ),
        ctx.device,
    )
    models = {n: build_model(c, ctx) for n, c in cfgs.items()}
    opts = {n: make_optimizer(m, cfg.train) for n, m in models.items()}
    rows = []
    for step in range(STEPS):
        row, routed = {"step": step + 1}, {}
        for name in ("eager", "fast"):
            lm, aux, metrics, grad_norm = train_step(models[name], opts[name], cfg, ctx, batches, step)
            row[name] = [float(lm.detach()), float(aux.detach()), float(grad_norm)]
            routed[name] = [routing_key(m, cfg.moe.num_experts) for m in metrics]
        row["copies_routed_differently"] = all_ranks_sum(
            sum(len(a ^ b) for a, b in zip(routed["eager"], routed["fast"]))
        )
        rows.append(row)
        with torch.no_grad():
            models["fast"].load_state_dict(models["eager"].state_dict())
        opts["fast"].load_state_dict(opts["eager"].state_dict())
    return rows


def all_ranks_sum(n: int) -> int:
    """``n`` summed over the ranks (the gradient norm is global, so a flip on any rank shows in it)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return n
    t = torch.tensor([n], dtype=torch.long)
    dist.all_reduce(t)
    return int(t)


def routing_key(metrics, num_experts: int) -> set:
    """The admitted (token, expert) copies of one MoE layer call on this rank."""
    kept = metrics.kept.bool()
    return set((metrics.token[kept] * num_experts + metrics.expert[kept]).tolist())


def main(out: str) -> None:
    import torch.distributed as dist

    results = {name: lockstep(sets) for name, sets in cases()}
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
