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
from backends.torch.moe_layer import MoELayer
from locmoe.routing import route
from tests.backends.torch import moe_cases as mc


def gather(t: torch.Tensor, ep) -> np.ndarray:
    return all_gather_rows(t.contiguous(), ep).numpy()


def gather_uneven(t: torch.Tensor) -> np.ndarray:
    """Concatenate tensors of different lengths (expert choice gives ranks different copy counts)."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.numpy())
    return np.concatenate(parts)


def run_case(c, ctx):
    cfg = mc.job(**c)
    ep = expert_parallel(ctx, cfg.parallel, mc.E)
    layer = MoELayer(cfg.moe, mc.D, mc.V, ep)
    w = mc.global_weights(cfg)
    mc.load_weights(layer, w)
    x, ids, dom, g = mc.global_batch()
    r, T = ep.rank, mc.TOKENS_PER_RANK
    part = slice(r * T, (r + 1) * T)
    y, gx, m = mc.run_layer(layer, x[part], ids[part], dom[part], g[part], mc.TOPOLOGY.world_size)
    out = {
        "y": gather(y, ep.group),
        "gx": gather(gx, ep.group),
        "expert": gather_uneven(m.expert),
        "kept": gather_uneven(m.kept),
        "summary": m.summary(),
        "by_stage": layer.traffic.by_stage,
    }
    for name in ("w1", "w2", "w3"):
        p = getattr(layer.experts, name)
        if p is not None:
            local = gather(p.grad, ep.group).reshape(mc.TOPOLOGY.world_size, -1, *p.shape[1:])
            full = np.zeros((mc.E, *p.shape[1:]), dtype=np.float32)
            for rank in range(mc.TOPOLOGY.world_size):
                full[list(ep.placement.local_experts(rank))] = local[rank]
            out["grad_" + name] = full
    if layer.router.gate_weight is not None:
        gg = layer.router.gate_weight.grad.clone()
        dist.all_reduce(gg)
        out["grad_gate"] = gg.numpy()
    stages = [None] * mc.TOPOLOGY.world_size
    dist.all_gather_object(stages, layer.traffic.by_stage)
    out["stages"] = stages
    return cfg, w, (x, ids, dom), out


def compare(c, cfg, w, batch, out):
    x, ids, dom = batch
    _, _, _, _, y_ref, gx_ref, grads_ref, m_ref = mc.single_process_reference(c)
    res = {
        "name": mc.case_name(c),
        "y_err": float(np.abs(out["y"] - y_ref).max()),
        "gx_err": float(np.abs(out["gx"] - gx_ref).max()),
        "summary": out["summary"],
        "ref_summary": m_ref.summary(),
    }
    for name in ("w1", "w2", "w3"):
        if "grad_" + name in out:
            res[f"g{name}_err"] = float(np.abs(out["grad_" + name] - grads_ref["experts." + name]).max())
    if "grad_gate" in out:
        res["ggate_err"] = float(np.abs(out["grad_gate"] - grads_ref["router.gate_weight"]).max())
    # routing decisions against the numpy reference (fp32 inputs, as the layer sees them)
    gate = w["gate"] if cfg.moe.router.gate == "dense" else None
    domain = dom.numpy() if cfg.moe.domains.num_domains > 1 else None
    placement = mc.emulated_ep(cfg).placement
    ref = route(
        x.numpy(),
        cfg.moe,
        placement,
        np.repeat(np.arange(4), mc.TOKENS_PER_RANK),
        gate_weight=gate,
        token_ids=ids.numpy(),
        domain=domain,
    )
    res["experts_equal"] = bool(np.array_equal(out["expert"], ref.plan.expert))
    res["kept_equal"] = bool(np.array_equal(out["kept"], ref.plan.kept))
    # byte counters against the plan's prediction, per rank and per stage
    row = mc.D * 4
    scheme = c["dispatch"]
    res["traffic_ok"] = True
    for direction in ("dispatch", "combine"):
        pred = ref.plan.traffic(row, scheme, direction)
        for rank, stages in enumerate(out["stages"]):
            tag = ":combine" if direction == "combine" else ""
            names = ["flat"] if scheme == "flat" else ["stage1", "stage2"]
            got = np.sum([stages.get(n + tag, [0, 0]) for n in names], axis=0)
            if list(got) != [pred["intra_node"][rank], pred["cross_node"][rank]]:
                res["traffic_ok"] = False
                res.setdefault("traffic_mismatch", []).append(
                    [direction, rank, list(map(int, got)), int(pred["intra_node"][rank]), int(pred["cross_node"][rank])]
                )
    res["cross_bytes"] = int(out["summary"]["cross_node_bytes"])
    res["cross_bytes_measured"] = int(sum(sum(v[1] for k, v in s.items() if ":grad" not in k) for s in out["stages"]))
    res["cross_bytes_predicted"] = int(
        sum(ref.plan.traffic(row, scheme, d)["cross_node"].sum() for d in ("dispatch", "combine"))
    )
    return res


def main():
    ctx = init_distributed(mc.job().parallel)
    report = []
    for c in mc.CASES:
        cfg, w, batch, out = run_case(c, ctx)
        if ctx.rank == 0:
            report.append(compare(c, cfg, w, batch, out))
    if ctx.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
