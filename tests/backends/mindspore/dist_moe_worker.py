"""msrun worker: every case of ``moe_cases.CASES`` on 4 CPU workers (2 nodes x 2), compared on rank 0 with
the single-process reference and the numpy dispatch plan. Writes a JSON report for the pytest side.

    msrun --worker_num 4 --local_worker_num 4 --master_port P --log_dir L --join True \
        tests/backends/mindspore/dist_moe_worker.py OUT.json
"""

import json
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor

from backends.mindspore.collectives import TrafficCounter, all_gather_rows, all_reduce, all_to_all
from backends.mindspore.distributed import expert_parallel, init_distributed, shutdown
from backends.mindspore.moe_layer import MoELayer
from tests.backends.mindspore import moe_cases as mc
from tests.backends.shared_moe_checks import full_expert_grads, report_all_cases
from tests.moe_cases_common import build_layer, rank_slice

STAGES = ["flat", "stage1", "stage2"]
STAGES = [s + tag for s in STAGES for tag in ("", ":combine", ":grad", ":combine:grad")]


def gather(t, group) -> np.ndarray:
    return all_gather_rows(Tensor(np.ascontiguousarray(t)), group).asnumpy()


def gather_uneven(t: np.ndarray, group) -> np.ndarray:
    """Concatenate arrays of different lengths (expert choice gives ranks different copy counts)."""
    lengths = gather(np.array([len(t)], dtype=np.int64), group)
    padded = np.zeros(int(lengths.max()), dtype=np.int64)
    padded[: len(t)] = t
    rows = gather(padded[None], group)
    return np.concatenate([r[:n] for r, n in zip(rows, lengths)])


def check_collectives(ctx) -> dict:
    """The collective adapter alone, on every group kind: uneven splits with empty sends and receives, rows
    labelled by (source, destination, index); gradients; byte counts; all-gather of unequal blocks."""
    W, me = ctx.world_size, ctx.rank
    routes = np.random.default_rng(5).integers(0, 4, (W, W))
    routes[1, :] = 0  # rank 1 sends nothing,
    routes[:, 2] = 0  # rank 2 receives nothing
    ok = {}
    for kind in ("ep", "intra", "inter"):
        group = getattr(ctx, kind)
        members = list(group.world_ranks)
        send, recv = routes[me, members], routes[members, me]
        label = lambda s, d, n: np.stack([s * 100.0 + d * 10 + np.arange(n), np.full(n, s)], 1)  # noqa: E731
        x = Tensor(np.concatenate([label(me, d, routes[me, d]) for d in members]).astype(np.float32))
        want = np.concatenate([label(s, me, routes[s, me]) for s in members])
        counter = TrafficCounter()
        out = all_to_all(x, send, recv, group, counter, kind)
        # d/dx of Σ out·c is c moved back to the sender: each sent row must get its own label back
        grad = ms.grad(lambda t: (all_to_all(t, send, recv, group) * Tensor(want.astype(np.float32))).sum())(x)
        nodes = np.asarray(group.nodes)
        row_bytes = 2 * 4
        cross = int((send * (nodes != nodes[group.my_index])).sum() * row_bytes)
        ok[kind] = bool(
            np.array_equal(out.asnumpy(), want)
            and np.array_equal(grad.asnumpy(), x.asnumpy())
            and counter.cross_node == cross
            and counter.calls == 1
        )
    blocks = np.full((1 + ctx.layout.topology.node_of(me), 2), me, dtype=np.int64)  # node 1 sends more rows
    got = all_gather_rows(Tensor(blocks), ctx.intra).asnumpy()
    ok["gather"] = bool(np.array_equal(got, np.concatenate([np.full_like(blocks, r) for r in ctx.intra.world_ranks])))
    total = all_reduce(Tensor(np.array([me], dtype=np.int64)), ctx.inter).asnumpy()
    ok["reduce"] = bool(total.tolist() == [sum(ctx.inter.world_ranks)])
    return {k: bool(v) for k, v in zip(ok, gather(np.array([list(ok.values())]), ctx.world).all(axis=0))}


def check_rank_without_tokens(ctx) -> dict:
    """A learned gate that never picks experts 6 and 7 leaves rank 3 without a single row to process; the
    layer must still equal the one-process run (and not hang: rank 3 joins every backward all-to-all)."""
    c = mc.case(kind="gshard", mode="dropless")
    cfg = mc.job(**c)
    w = mc.global_weights(cfg)
    w["gate"][:, :6], w["gate"][:, 6:] = np.abs(w["gate"][:, :6]), -np.abs(w["gate"][:, 6:])
    x, ids, dom, g = mc.global_batch()
    x = np.abs(x)  # positive inputs: experts 6, 7 always score < 0
    ep = expert_parallel(ctx, cfg.parallel, mc.E)
    layer = MoELayer(cfg.moe, mc.D, mc.V, ep)
    mc.load_weights(layer, w)
    part = slice(ep.rank * mc.TOKENS_PER_RANK, (ep.rank + 1) * mc.TOKENS_PER_RANK)
    y, gx, m, grads = mc.run_layer(layer, x[part], ids[part], dom[part], g[part], mc.TOPOLOGY.world_size)
    # contiguous placement
    y, gx, gw1 = gather(y, ep.group), gather(gx, ep.group), gather(grads["experts.w1"], ep.group)
    one = MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg))
    mc.load_weights(one, w)
    y_ref, gx_ref, m_ref, grads_ref = mc.run_layer(one, x, ids, dom, g, 1)
    return {
        "rank3_rows": int(m_ref.stats.admitted[6:].sum()),
        "y_err": float(np.abs(y - y_ref).max()),
        "gx_err": float(np.abs(gx - gx_ref).max()),
        "gw1_err": float(np.abs(gw1 - grads_ref["experts.w1"]).max()),
    }


def run_case(c, ctx):
    cfg, layer, w = build_layer(mc, c, ep=lambda cfg: expert_parallel(ctx, cfg.parallel, mc.E))
    ep = layer.ep
    x, ids, dom, g = mc.global_batch()
    part = rank_slice(ep.rank)
    y, gx, m, grads = mc.run_layer(layer, x[part], ids[part], dom[part], g[part], mc.TOPOLOGY.world_size)
    out = {
        "y": gather(y, ep.group),
        "gx": gather(gx, ep.group),
        "expert": gather_uneven(m.expert.asnumpy(), ep.group),
        "kept": gather_uneven(m.kept.asnumpy().astype(np.int64), ep.group).astype(bool),
        "summary": m.summary(),
    }
    local = {n: grads["experts." + n] for n in ("w1", "w2", "w3") if "experts." + n in grads}
    out.update(full_expert_grads({n: gather(v, ep.group) for n, v in local.items()}, ep.placement))
    if "router.gate_weight" in grads:
        out["grad_gate"] = all_reduce(Tensor(grads["router.gate_weight"]), ep.group).asnumpy()
    mine = np.array([layer.traffic.by_stage.get(s, [0, 0]) for s in STAGES], dtype=np.int64)
    out["stages"] = [dict(zip(STAGES, s.tolist())) for s in gather(mine[None], ep.group)]
    return cfg, w, (x, ids, dom), out


def main():
    start = time.time()
    ctx = init_distributed(mc.job().parallel)
    collectives = check_collectives(ctx)
    collectives["rank_without_tokens"] = check_rank_without_tokens(ctx)
    report = report_all_cases(mc, ctx.rank, lambda c: run_case(c, ctx))
    if ctx.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"cases": report, "collectives": collectives, "seconds": time.time() - start}, f, indent=1)
    shutdown()


if __name__ == "__main__":
    main()
