"""torchrun worker: every case of ``moe_cases.CASES`` on 4 gloo ranks (2 nodes x 2), compared on rank 0
with the single-process reference and the numpy dispatch plan. Writes a JSON report for the pytest side.

    torchrun --standalone --nproc_per_node 4 tests/backends/torch/dist_moe_worker.py OUT.json
"""

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from backends.torch.collectives import all_gather_rows
from backends.torch.distributed import expert_parallel, init_distributed
from tests.backends.shared_moe_checks import full_expert_grads, report_all_cases
from tests.backends.torch import moe_cases as mc
from tests.moe_cases_common import build_layer, rank_slice


def gather(t: torch.Tensor, ep) -> np.ndarray:
    return all_gather_rows(t.contiguous(), ep).numpy()


def gather_uneven(t: torch.Tensor) -> np.ndarray:
    """Concatenate tensors of different lengths (expert choice gives ranks different copy counts)."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.numpy())
    return np.concatenate(parts)


def run_case(c, ctx):
    cfg, layer, w = build_layer(mc, c, ep=lambda cfg: expert_parallel(ctx, cfg.parallel, mc.E))
    ep = layer.ep
    x, ids, dom, g = mc.global_batch()
    part = rank_slice(ep.rank)
    y, gx, m = mc.run_layer(layer, x[part], ids[part], dom[part], g[part], mc.TOPOLOGY.world_size)
    out = {
        "y": gather(y, ep.group),
        "gx": gather(gx, ep.group),
        "expert": gather_uneven(m.expert),
        "kept": gather_uneven(m.kept),
        "summary": m.summary(),
        "by_stage": layer.traffic.by_stage,
    }
    local = {n: p.grad for n in ("w1", "w2", "w3") if (p := getattr(layer.experts, n)) is not None}
    out.update(full_expert_grads({n: gather(v, ep.group) for n, v in local.items()}, ep.placement))
    if layer.router.gate_weight is not None:
        gg = layer.router.gate_weight.grad.clone()
        dist.all_reduce(gg)
        out["grad_gate"] = gg.numpy()
    stages = [None] * mc.TOPOLOGY.world_size
    dist.all_gather_object(stages, layer.traffic.by_stage)
    out["stages"] = stages
    return cfg, w, (x.numpy(), ids.numpy(), dom.numpy()), out


def main():
    ctx = init_distributed(mc.job().parallel)
    report = report_all_cases(mc, ctx.rank, lambda c: run_case(c, ctx))
    if ctx.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
