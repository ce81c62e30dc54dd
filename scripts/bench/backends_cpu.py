"""Training throughput of the tiny model (configs/tiny_cpu.yaml: one process emulating 2 nodes x 2 devices) on
CPU: torch, MindSpore PyNative, MindSpore with the dense blocks compiled (``parallel.jit``), MindSpore with
static-shape dispatch (``moe.dispatch_shape: static``) in PyNative and with the whole step compiled
(``parallel.jit_step``; its first step holds the trace and the compilation). One table, one JSON.

    python scripts/bench/backends_cpu.py [--steps 12] [--threads 2] [--repeats 3] [--variants torch,...]
                                         [--out bench_results/backends_cpu.json]

Each backend runs the real training loop (``locmoe train``) in its own process; tokens/s is the median over
the logged steps after the first ``--warmup`` (compilation, allocator warm-up), as the loop itself measures it
(training time only, no validation or checkpoint). ``--repeats`` runs every variant that many times, in
rounds (each round runs every variant once), and reports each variant's median run: on a shared machine a
slow spell then lands on all variants alike instead of on whichever ran during it (torch's step alone has
measured 135-298 ms on this 2-core VM from one run to the next).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from locmoe.report import format_table, write_json  # noqa: E402

VARIANTS = {
    "torch": ["parallel.backend=torch"],
    "mindspore PyNative": ["parallel.backend=mindspore", "parallel.jit=false"],
    "mindspore jit": ["parallel.backend=mindspore", "parallel.jit=true"],
    "mindspore static": ["parallel.backend=mindspore", "moe.dispatch_shape=static"],
    "mindspore jit_step": ["parallel.backend=mindspore", "moe.dispatch_shape=static", "parallel.jit_step=true"],
}


def cpu_model() -> dict:
    """The CPU's model, clock and vector extensions (Linux), recorded with every result: the two frameworks'
    kernels use the extensions differently (torch dispatches on them at run time), so a ratio is read against
    the CPU that gave it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}

    def field(key: str) -> str:
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")

    simd = sorted(f for f in field("flags").split() if f.startswith(("avx", "amx")) or f in ("fma", "sse4_2"))
    return {
        "cpu_model": field("model name"),
        "cpu_family_model": f"{field('cpu family')}/{field('model')}",
        "cpu_mhz": field("cpu MHz"),
        "simd": simd,
    }


def median_run(runs: list[dict]) -> dict:
    """The run of median tokens/s (the lower middle one for an even count), with every run's tokens/s."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "runs_tokens_per_s": [r["tokens_per_s"] for r in runs]}


def run(name: str, args: argparse.Namespace, out_dir: Path) -> dict:
    sets = [
        *VARIANTS[name],
        f"train.steps={args.steps}",
        "train.warmup_steps=2",
        "logging.log_every=1",
        "train.eval_every=0",
        "logging.progress=false",
        "logging.tensorboard=false",
        "export.at_end=false",
        "train.ckpt_every=0",
        f"train.out_dir={out_dir}",
        "data.max_bytes=200000",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads), GLOG_v="3")
    cmd = [
        sys.executable,
        "-m",
        "locmoe",
        "train",
        str(ROOT / "configs" / "tiny_cpu.yaml"),
        *[a for s in sets for a in ("--set", s)],
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > args.warmup]
    return {
        "backend": name,
        "tokens_per_s": float(np.median([r["tokens_per_s"] for r in timed])),
        "step_ms": 1e3 * float(np.median([r["step_time_s"] for r in timed])),
        "first_step_ms": 1e3 * rows[0]["step_time_s"],
        "loss_at_end": rows[-1]["lm_loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the median")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of each run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant, in rounds; the median is kept")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, torch first: {list(VARIANTS)}")
    p.add_argument("--out", default=str(ROOT / "bench_results" / "backends_cpu.json"))
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or names[0] != "torch" or args.repeats < 1:
        p.error(f"--variants: torch first, then any of {list(VARIANTS)[1:]} (got {names}); --repeats >= 1")
    runs: dict[str, list] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in names:
                runs[name].append(run(name, args, Path(tmp) / f"{name.replace(' ', '_')}_{rep}"))
    rows = [median_run(runs[n]) for n in names]
    base = rows[0]["tokens_per_s"]
    for name, r in zip(names, rows):
        r["vs_torch"] = r["tokens_per_s"] / base
        # the ratio within each round (torch and this variant run close in time), its median over the rounds
        r["vs_torch_by_round"] = float(
            np.median([a["tokens_per_s"] / t["tokens_per_s"] for a, t in zip(runs[name], runs["torch"])])
        )
    columns = ["backend", "tokens_per_s", "step_ms", "first_step_ms", "vs_torch", "vs_torch_by_round", "loss_at_end"]
    print(format_table(rows, columns))
    cpu = cpu_model()
    print(f"CPU: {cpu}")
    import mindspore
    import torch

    meta = {
        "config": "configs/tiny_cpu.yaml",
        "tokens_per_step": 16 * 128,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        **cpu,
        "torch": torch.__version__,
        "mindspore": mindspore.__version__,
    }
    print(f"wrote {write_json(args.out, {'meta': meta, 'rows': rows})}")


if __name__ == "__main__":
    main()
