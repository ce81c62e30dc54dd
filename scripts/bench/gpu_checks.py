"""Quick GPU facts the MoE layer relies on: grouped GEMM correctness in bf16 against a float32 loop, and its
speed with the expert weights stored row-major [E, K, N] versus column-major (the transpose of [E, N, K]).

    python scripts/bench/gpu_checks.py [--out bench_results/gpu_checks.json]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from locmoe.report import format_table, write_json  # noqa: E402

mm = getattr(torch.nn.functional, "grouped_mm", None) or torch._grouped_mm  # pyright: ignore[reportPrivateImportUsage]  # older torch: private only


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench_results/gpu_checks.json")
    args = p.parse_args()
    E, M, K, N = 64, 65536, 2048, 1408
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    counts = torch.randint(1, 2 * M // E, (E,), device="cuda")
    counts = (counts * M // counts.sum()).clamp(min=0)
    counts[-1] += M - counts.sum()
    offs = torch.cumsum(counts, 0).to(torch.int32)
    w_row = torch.randn(E, K, N, device="cuda", dtype=torch.bfloat16) * 0.02
    w_col = w_row.transpose(-2, -1).contiguous().transpose(-2, -1)  # same values, column-major
    out = mm(x, w_row, offs=offs)
    bounds = [0, *offs.tolist()]
    ref = torch.cat([x[bounds[e] : bounds[e + 1]].float() @ w_row[e].float() for e in range(E)])
    rel = float((out.float() - ref).norm() / ref.norm())
    rel_col = float((mm(x, w_col, offs=offs).float() - ref).norm() / ref.norm())
    flops = 2 * M * K * N
    rows = [
        dict(check="grouped_mm bf16 vs fp32 loop, rel. error", value=rel),
        dict(check="grouped_mm bf16 (column-major B) rel. error", value=rel_col),
        dict(
            check="grouped_mm TFLOP/s, B row-major [E,K,N]", value=flops / timed(lambda: mm(x, w_row, offs=offs)) / 1e9
        ),
        dict(check="grouped_mm TFLOP/s, B column-major", value=flops / timed(lambda: mm(x, w_col, offs=offs)) / 1e9),
        dict(
            check="per-expert loop TFLOP/s",
            value=flops / timed(lambda: [x[bounds[e] : bounds[e + 1]] @ w_row[e] for e in range(E)]) / 1e9,
        ),
    ]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, E={E} M={M} K={K} N={N}")
    print(format_table(rows, floatfmt=".4g"))
    write_json(args.out, {"device": torch.cuda.get_device_name(), "rows": rows})


if __name__ == "__main__":
    main()
