"""MoE layer benchmark on GPUs: forward+backward time and expert-FLOP rate against a dense FFN of the same
FLOPs (1 GPU), and all-to-all bandwidth of the dispatch schemes against raw ``all_to_all_single`` plus
overlap on/off (2 GPUs, NCCL). One table, one JSON.

    python scripts/bench/moe_layer.py [--shape ours|megatron] [--force-balance] [--tokens 32768]
        [--out bench_results/moe_layer.json]

Shapes: ``ours`` (E 64, d 2048, f 1408, top-2, 32 768 tokens per GPU) and ``megatron``, Megatron-Core's
Mixtral proxy of its MoE-layer test (E 8, d 4096, f 14 336, top-2, 4 096 tokens per GPU, one GPU, no
communication, forced balance), whose figure is ~481 TFLOP/s per H100: the rows say how far from it ours are
(``vs_megatron``). ``--force-balance`` (implied by ``--shape megatron``) routes every token round-robin
(``moe.force_balance``), as Megatron's and torchtitan's quoted numbers do; without it the router decides.
TFLOP/s counts the experts' GEMMs only, forward + backward = 3 x forward (Megatron's convention).

With two or more GPUs visible it relaunches itself under torchrun for the multi-GPU part. ``--smoke`` runs
either part on CPU in fp32 at tiny sizes (the CI check that the script works).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from backends.torch import fusion  # noqa: E402
from backends.torch.collectives import Group  # noqa: E402
from backends.torch.distributed import ExpertParallel, expert_parallel, init_distributed  # noqa: E402
from backends.torch.experts import GroupedExperts, expert_flops  # noqa: E402
from backends.torch.moe_layer import MoELayer  # noqa: E402
from locmoe.config import load_config  # noqa: E402
from locmoe.parallel.topology import ExpertPlacement, Topology  # noqa: E402
from locmoe.report import format_table, write_json  # noqa: E402

E, D, F, K = 64, 2048, 1408, 2
DEV, DT = "cuda", torch.bfloat16  # --smoke: CPU (gloo for the multi-process part), fp32, small, to check it
FORCE = False  # moe.force_balance of every layer built here
# (E, d, f, tokens per GPU) of each --shape; Megatron-Core's MoE-layer test (Mixtral proxy, H100)
SHAPES = {"ours": (64, 2048, 1408, 32768), "megatron": (8, 4096, 14336, 4096)}
MEGATRON_TFLOPS = 481.0


def timed(fn, warmup=3, reps=10, rounds=3) -> float:
    """Milliseconds per call of ``fn``: CUDA events around ``reps`` back-to-back calls (as in training, the
    host runs ahead of the GPU), the median of ``rounds`` such batches."""
    for _ in range(warmup):
        fn()
    if DEV == "cpu":
        import time

        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1e3 * (time.perf_counter() - t0) / reps
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return sorted(times)[len(times) // 2]


def profile(fn, label: str) -> None:
    """Print the CUDA kernels that take the time of ``fn`` (three calls after warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    print(f"--- profile: {label} (3 calls)")
    # aten ops by the CUDA time of the kernels they launched (names the op behind each kernel), then kernels
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))


def job(kind="gshard", mode="dropless", impl="auto", chunks=1, nodes=1, per_node=1, dispatch="hierarchical", fuse=True):
    return load_config(
        overrides=[
            f"moe.fuse_kernels={str(fuse).lower()}",
            f"model.d_model={D}",
            "model.n_heads=16",
            f"moe.num_experts={E}",
            f"moe.d_expert={F}",
            f"moe.router.kind={kind}",
            f"moe.capacity.mode={mode}",
            f"moe.expert_impl={impl}",
            f"moe.overlap_chunks={chunks}",
            "moe.check_finite=false",
            f"moe.force_balance={str(FORCE).lower()}",
            f"parallel.dispatch={dispatch}",
            *([f"parallel.nodes={nodes}", f"parallel.devices_per_node={per_node}"] if nodes * per_node > 1 else []),
        ]
    )


def make_layer(cfg, ep, seed=0):
    torch.manual_seed(seed)
    layer = MoELayer(cfg.moe, D, 256, ep).to(DEV)
    layer.experts.reset_parameters(0.02)
    if layer.router.gate_weight is not None:
        torch.nn.init.normal_(layer.router.gate_weight, 0, 0.02)
    return layer.to(DT)


def fresh_grads(*tensors) -> None:
    """As a training step after ``zero_grad(set_to_none=True)``: backward writes gradients, it does not add
    them to the last call's (accumulating 3 x 369 MB of expert gradients would cost ~1 ms the layer does not)."""
    for t in tensors:
        t.grad = None


def fwd_bwd(layer, x, g):
    params = [x, *layer.parameters()]

    def step():
        fresh_grads(*params)
        y, aux, _ = layer(x)
        torch.autograd.backward([y, aux], [g, torch.ones_like(aux)])

    return step


def dense_ffn_step(M):
    """A dense SwiGLU FFN over M rows: the same FLOPs as the experts over M routed copies."""
    w1 = torch.randn(D, F, device=DEV, dtype=DT, requires_grad=True)
    w3 = torch.randn(D, F, device=DEV, dtype=DT, requires_grad=True)
    w2 = torch.randn(F, D, device=DEV, dtype=DT, requires_grad=True)
    x = torch.randn(M, D, device=DEV, dtype=DT, requires_grad=True)
    g = torch.randn(M, D, device=DEV, dtype=DT)

    def step():
        fresh_grads(x, w1, w3, w2)
        y = fusion.swiglu(x @ w1, x @ w3) @ w2
        y.backward(g)

    return step


def swiglu_check() -> dict:
    """The fused (compiled) SwiGLU against the eager expression: output and both input gradients, bf16."""
    rows = 65536 if DEV == "cuda" else 256
    h1, h3, go = (torch.randn(rows, F, device=DEV, dtype=DT) for _ in range(3))
    outs = []
    for fuse in (True, False):
        a, b = h1.clone().requires_grad_(), h3.clone().requires_grad_()
        y = fusion.swiglu(a, b, fuse=fuse)
        y.backward(go)
        assert a.grad is not None and b.grad is not None  # both require grad
        outs.append((y.float(), a.grad.float(), b.grad.float()))
    diffs = [float((p - q).abs().max() / q.abs().max()) for p, q in zip(*outs)]
    return dict(
        part="check",
        what=f"fused vs eager SwiGLU, max rel. diff y/dh1/dh3: "
        f"{diffs[0]:.1e}/{diffs[1]:.1e}/{diffs[2]:.1e} (bf16 ulp 7.8e-3)",
        ms=None,
    )


def layer_check(ep, x, g) -> dict:
    """The whole layer with fused kernels against eager: output, input and parameter gradients (bf16)."""
    outs = []
    for fuse in (True, False):
        layer = make_layer(job(fuse=fuse), ep)
        xi = x.detach().clone().requires_grad_()
        y, aux, _ = layer(xi)
        torch.autograd.backward([y, aux], [g, torch.ones_like(aux)])
        outs.append([y.float(), xi.grad.float(), layer.experts.w1.grad.float(), layer.experts.w2.grad.float()])
        del layer
    diffs = [float((p - q).abs().max() / q.abs().max()) for p, q in zip(*outs)]
    return dict(
        part="check",
        what="fused vs eager MoE layer, max rel. diff y/dx/dw1/dw2: " + "/".join(f"{d:.1e}" for d in diffs),
        ms=None,
    )


def single_gpu(args) -> list[dict]:
    T, rows = args.tokens, []
    one = Group(None, (0,), (0,), 0)
    topo = Topology(1, 1)
    ep = ExpertParallel(
        topology=topo,
        placement=ExpertPlacement.contiguous(E, topo),
        rank=0,
        group=one,
        intra=one,
        inter=one,
        scheme="flat",
    )
    M = T * K
    flops = 3 * expert_flops(M, D, F, "swiglu")  # forward + backward (2x forward)
    n = 8192 if DEV == "cuda" else 256
    a, b = (torch.randn(n, n, device=DEV, dtype=DT) for _ in range(2))
    gemm = 2 * n**3 / timed(lambda: a @ b) / 1e9
    rows.append(dict(part="1 GPU", what=f"dense GEMM {n}^3", ms=None, tflops=gemm, pct_of_dense=None))
    dense_ms = timed(dense_ffn_step(M))
    dense = flops / dense_ms / 1e9
    rows.append(
        dict(
            part="1 GPU", what=f"dense SwiGLU FFN, {M} rows (reference)", ms=dense_ms, tflops=dense, pct_of_dense=100.0
        )
    )
    x = torch.randn(T, D, device=DEV, dtype=DT, requires_grad=True)
    g = torch.randn(T, D, device=DEV, dtype=DT)
    rows.append(swiglu_check())
    rows.append(layer_check(ep, x, g))
    cases = (
        ("gshard", "dropless", "grouped", True),
        ("gshard", "dropless", "grouped", False),
        ("locmoe", "dropless", "grouped", True),
        ("gshard", "factor", "grouped", True),
        ("gshard", "dropless", "loop", True),
    )
    for kind, mode, impl, fused in cases:
        layer = make_layer(job(kind, mode, impl, fuse=fused), ep)
        ms = timed(fwd_bwd(layer, x, g), reps=args.reps)
        if args.profile == kind and mode == "dropless" and impl == "grouped" and fused:
            profile(fwd_bwd(layer, x, g), f"MoE layer fwd+bwd, {kind} dropless grouped")
        act = ("" if fused else ", unfused") + (", forced balance" if FORCE else "")
        rows.append(
            dict(
                part="1 GPU",
                what=f"MoE layer fwd+bwd: {kind} top-2, {mode}, {impl} experts{act}",
                ms=ms,
                tflops=flops / ms / 1e9,
                pct_of_dense=100 * flops / ms / 1e9 / dense,
            )
        )
        del layer
    counts = torch.full((E,), M // E, device=DEV)
    xe = torch.randn(M, D, device=DEV, dtype=DT, requires_grad=True)
    ge = torch.randn(M, D, device=DEV, dtype=DT)
    for impl, fused in (("grouped", True), ("grouped", False), ("loop", True)):
        reps = args.reps if impl == "grouped" else max(2, args.reps // 4)  # the loop is ~10x slower
        ex = GroupedExperts(E, D, F, "swiglu", impl, fuse=fused).to(DEV)
        ex.reset_parameters(0.02)
        ex = ex.to(DT)
        ms = timed(lambda: (fresh_grads(xe, *ex.parameters()), ex(xe, counts).backward(ge)), reps=reps)
        act = "" if fused else ", unfused"
        rows.append(
            dict(
                part="1 GPU",
                what=f"experts only, balanced, {impl}{act}",
                ms=ms,
                tflops=flops / ms / 1e9,
                pct_of_dense=100 * flops / ms / 1e9 / dense,
            )
        )
    for r in rows:
        if r.get("tflops"):
            r["pct_of_gemm"] = 100 * r["tflops"] / gemm
            if args.shape == "megatron" and not args.smoke:
                r["vs_megatron"] = r["tflops"] / MEGATRON_TFLOPS
    if args.shape == "megatron":
        rows.append(
            dict(
                part="reference",
                what="Megatron-Core MoE layer, Mixtral proxy, forced balance, H100 (its figure)",
                ms=None,
                tflops=MEGATRON_TFLOPS,
                vs_megatron=1.0,
            )
        )
    return rows


def multi_gpu(args) -> None:
    """Runs under torchrun on 2+ GPUs as ``--nodes`` nodes (default: one GPU per node); rank 0 writes its rows
    to args.part_out. Raw ``all_to_all_single`` moves the same bytes as the dispatch of one routed batch."""
    T, rows = args.tokens, []
    W = int(os.environ["WORLD_SIZE"])
    N = args.nodes or W
    cfg = job(nodes=N, per_node=W // N)
    ctx = init_distributed(cfg.parallel)
    ep = expert_parallel(ctx, cfg.parallel, E)
    torch.manual_seed(1 + ctx.rank)
    x = torch.randn(T, D, device=DEV, dtype=DT, requires_grad=True)
    g = torch.randn(T, D, device=DEV, dtype=DT)
    part = f"{W} GPUs ({N}x{W // N})"
    raw_ms = None
    for scheme in ("flat", "hierarchical") if W // N > 1 and N > 1 else ("flat",):
        cfg_s = job(nodes=N, per_node=W // N, dispatch=scheme)
        layer = make_layer(cfg_s, expert_parallel(ctx, cfg_s.parallel, E))  # the scheme lives in the EP view
        rank_ids = torch.full((T,), ep.rank, device=DEV)
        out = layer.router(x, layer.router.node_mask[rank_ids // ep.topology.devices_per_node], 1)
        out, layout, _, _ = layer.dispatcher.plan(out, rank_ids, T, 1, training=True)
        d = layout.chunks[0]
        send = layer.dispatcher.permute(x.detach(), out, layout)  # this rank's copies in send order
        if raw_ms is None:  # the raw reference: one flat all_to_all_single of the same send matrix
            split_send, split_recv = d.exchange.send, d.exchange.recv
            nbytes = sum(n for i, n in enumerate(split_send) if i != ep.rank) * D * send.element_size()
            raw_out = send.new_empty((sum(split_recv), D))
            raw_ms = timed(lambda: dist.all_to_all_single(raw_out, send, split_recv, split_send), reps=args.reps)
            rows.append(
                dict(
                    part=part,
                    what=f"raw all_to_all_single ({nbytes / 1e6:.0f} MB to peers)",
                    ms=raw_ms,
                    GBps=nbytes / raw_ms / 1e6,
                    pct_of_raw=100.0,
                )
            )
        exchange, dispatcher = d.exchange, layer.dispatcher
        ms = timed(lambda: exchange.dispatch(send)(), reps=args.reps)
        rows.append(
            dict(
                part=part, what=f"{scheme} scheme dispatch", ms=ms, GBps=nbytes / ms / 1e6, pct_of_raw=100 * raw_ms / ms
            )
        )
        full_ms = timed(lambda: dispatcher.dispatch(dispatcher.permute(x.detach(), out, layout), d)(), reps=args.reps)
        rows.append(
            dict(
                part=part,
                what=f"{scheme} dispatch incl. permute + expert sort",
                ms=full_ms,
                GBps=nbytes / full_ms / 1e6,
                pct_of_raw=100 * raw_ms / full_ms,
            )
        )
    for chunks in (1, 4):
        lay = make_layer(job(nodes=N, per_node=W // N, chunks=chunks), ep)
        ms = timed(fwd_bwd(lay, x, g), reps=args.reps)
        rows.append(dict(part=part, what=f"MoE layer fwd+bwd, overlap_chunks={chunks}", ms=ms))
        del lay
    if ctx.rank == 0:
        Path(args.part_out).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--tokens", type=int, default=None, help="tokens per GPU (default: the shape's, 32768 or 4096)")
    p.add_argument("--shape", default="ours", choices=sorted(SHAPES), help="layer sizes: ours or Megatron's proxy")
    p.add_argument(
        "--force-balance",
        action="store_true",
        help="route every token round-robin (moe.force_balance), as Megatron's and torchtitan's figures do",
    )
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="bench_results/moe_layer.json")
    p.add_argument("--part", default="all", choices=["all", "multi"])
    p.add_argument("--part-out", default="")
    p.add_argument("--smoke", action="store_true", help="CPU (gloo for the multi part), fp32, small sizes")
    p.add_argument("--nodes", type=int, default=0, help="multi-GPU part: nodes the GPUs form (0 = one GPU per node)")
    p.add_argument(
        "--profile",
        default="",
        choices=["", "gshard", "locmoe"],
        help="print the top CUDA kernels of this router's dropless grouped layer",
    )
    args = p.parse_args()
    global DEV, DT, E, D, F, FORCE
    E, D, F, tokens = SHAPES[args.shape]
    args.tokens = args.tokens or tokens
    FORCE = args.force_balance or args.shape == "megatron"  # Megatron's figure is force-balanced
    args.force_balance = FORCE
    if args.smoke:
        DEV, DT, E, D, F = "cpu", torch.float32, 8, 64, 32
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("moe_layer.py needs CUDA GPUs (run it through the device tool)")
    if args.part == "multi":
        return multi_gpu(args)
    rows = single_gpu(args)
    if torch.cuda.device_count() >= 2:
        part = Path(args.out).with_suffix(".multi.json")
        part.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(torch.cuda.device_count()),
            __file__,
            "--part",
            "multi",
            "--part-out",
            str(part),
            "--tokens",
            str(args.tokens),
            "--reps",
            str(args.reps),
            "--nodes",
            str(args.nodes),
            "--shape",
            args.shape,
            *(["--force-balance"] if FORCE else []),
        ]
        subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        rows += json.loads(part.read_text())
    device = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    routing = "forced balance (round-robin)" if FORCE else "the router's own choice"
    print(
        f"MoE layer ({args.shape}): E={E}, d={D}, f={F}, top-{K}, {args.tokens} tokens/GPU, {str(DT)[6:]}, "
        f"{routing}, {device}, torch {torch.__version__}"
    )
    print(
        "pct_of_dense: expert-FLOP rate vs a dense SwiGLU FFN of the same FLOPs (same activation kernel); "
        "pct_of_gemm: vs the dense GEMM rate; vs_megatron: vs Megatron-Core's 481 TFLOP/s on this shape"
    )
    cols = ["part", "what", "ms", "tflops", "pct_of_dense", "pct_of_gemm", "vs_megatron", "GBps", "pct_of_raw"]
    print(format_table(rows, [c for c in cols if any(c in r for r in rows)], ".3g"))
    shape = dict(experts=E, d_model=D, d_expert=F, top_k=K, tokens=args.tokens, force_balance=FORCE)
    write_json(
        args.out, {"device": device, "torch": torch.__version__, "args": vars(args), "shape": shape, "rows": rows}
    )


if __name__ == "__main__":
    main()
