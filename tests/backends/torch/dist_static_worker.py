"""torchrun worker: every case of ``tests.static_cases`` on 4 gloo ranks (2 nodes x 2) with static dispatch,
against one process with dynamic dispatch. Writes a JSON report for the pytest side.

    torchrun --standalone --nproc_per_node 4 tests/backends/torch/dist_static_worker.py OUT.json
"""

import json
import sys

import numpy as np
import torch.distributed as dist

from backends.torch.collectives import all_gather_rows
from backends.torch.distributed import expert_parallel, init_distributed
from backends.torch.moe_layer import MoELayer
from tests.backends.torch import moe_cases as mc
from tests.static_cases import STATIC_CASES, dynamic_twin


def run_case(c, ctx) -> dict:
    cfg = mc.job(**c)
    ep = expert_parallel(ctx, cfg.parallel, mc.E)
    layer = MoELayer(cfg.moe, mc.D, mc.V, ep)
    mc.load_weights(layer, mc.global_weights(cfg))
    x, ids, dom, g = mc.global_batch()
    T = mc.TOKENS_PER_RANK
    part = slice(ep.rank * T, (ep.rank + 1) * T)
    y, gx, m = mc.run_layer(layer, x[part], ids[part], dom[part], g[part], mc.TOPOLOGY.world_size)
    grad_w1 = all_gather_rows(layer.experts.w1.grad.contiguous(), ep.group).numpy()
    out = {
        "y": all_gather_rows(y, ep.group).numpy(),
        "gx": all_gather_rows(gx, ep.group).numpy(),
        "kept": all_gather_rows(m.kept, ep.group).numpy(),
        "gw1": grad_w1,
        "summary": m.summary(),
    }
    if ctx.rank != 0:
        return {}
    _, _, _, _, y_ref, gx_ref, grads_ref, m_ref = mc.single_process_reference(dynamic_twin(c))
    return {
        "name": mc.case_name(c),
        "y_err": float(np.abs(out["y"] - y_ref).max()),
        "gx_err": float(np.abs(out["gx"] - gx_ref).max()),
        "gw1_err": float(np.abs(out["gw1"] - grads_ref["experts.w1"]).max()),
        "kept_equal": bool(np.array_equal(out["kept"], m_ref.kept.numpy())),
        "dropped": out["summary"]["dropped_fraction"],
        "ref_dropped": m_ref.summary()["dropped_fraction"],
    }


def main():
    cfg0 = mc.job(**STATIC_CASES[0])
    ctx = init_distributed(cfg0.parallel)
    results = [run_case(c, ctx) for c in STATIC_CASES]
    if ctx.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
