"""Training runs of the router comparison (``router_compare.py``): what one run is, how many run at once, and
the numbers read back from its ``metrics.jsonl``.

A run is ``locmoe train`` of one router variant on one corpus with one seed, in its own process (one process
emulating 2 nodes, or torchrun with ``--nproc``). Several run at once: small models leave a GPU mostly idle, so
N concurrent processes finish the grid about N times sooner (their step times are then shared-GPU times).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STDLIB = "stdlib"  # the corpus name of the default source (the Python standard library's sources)


@dataclass
class Run:
    """One training run of the grid."""

    entry: str  # router variant, optionally with overrides: "locmoe@moe.router.rho=0.9"
    corpus: str  # a text file's path, or STDLIB
    seed: int
    out: Path
    sets: list = field(default_factory=list)  # every --set of the run

    @property
    def router(self) -> str:
        return self.entry.split("@")[0]

    @property
    def overrides(self) -> list:
        return self.entry.split("@")[1:]

    @property
    def corpus_name(self) -> str:
        return STDLIB if self.corpus == STDLIB else Path(self.corpus).stem

    @property
    def log(self) -> Path:
        """The run's console log, beside its folder: ``locmoe train`` writes only into a folder of its own."""
        return self.out.with_name(self.out.name + ".log")

    def command(self, job: str, nproc: int) -> list:
        launcher = (
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(nproc),
                "-m",
                "locmoe",
            ]
            if nproc > 1
            else [sys.executable, "-m", "locmoe"]
        )
        return [
            *launcher,
            "train",
            str(ROOT / "configs" / f"{job}.yaml"),
            "--with",
            str(ROOT / "configs" / "routers" / f"{self.router}.yaml"),
            *[a for s in self.sets for a in ("--set", s)],
        ]


def run_sets(
    run: Run,
    model: list,
    steps: int,
    dtype: str,
    nproc: int,
    nodes: int,
    device: str,
    devices_per_node: int = 0,
    eval_every: int = 0,
) -> list:
    """The --set overrides of one run: model sizes, schedule, logging, data, seed, topology (``nodes`` nodes of
    ``devices_per_node`` devices; 0 = nproc/nodes, or 1 when one process emulates them all), validation every
    ``eval_every`` steps (0 = at the end only), the variant's own."""
    data = [] if run.corpus == STDLIB else [f"data.sources=[{{path: {Path(run.corpus).resolve()}}}]"]
    return [
        *model,
        f"parallel.device={device}",
        f"train.steps={steps}",
        f"train.dtype={dtype}",
        f"train.warmup_steps={max(steps // 10, 1)}",
        f"train.eval_every={eval_every}",
        "train.eval_batches=16",
        "train.ckpt_every=0",
        "train.keep_checkpoints=1",
        "logging.log_every=10",
        "logging.progress=false",
        "logging.heatmap_every=0",
        "logging.tensorboard=false",
        "export.at_end=false",
        f"train.out_dir={run.out}",
        *data,
        "data.val_fraction=0.1",
        f"train.seed={run.seed}",
        f"data.seed={run.seed}",
        f"parallel.nodes={nodes}",
        f"parallel.devices_per_node={devices_per_node or max(nproc // nodes, 1)}",
        *run.overrides,
    ]


def run_all(commands: list[tuple[str, list, Path]], jobs: int) -> None:
    """Run (name, argv, log file) commands, at most ``jobs`` at a time; on a failure stop the others (our own
    processes, by handle) and exit with the failed run's log tail."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < jobs:
            name, argv, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            handle = open(log, "w")
            running.append(
                (name, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT), log, handle)
            )
        time.sleep(0.2)
        for item in list(running):
            name, proc, log, handle = item
            if proc.poll() is None:
                continue
            handle.close()
            running.remove(item)
            if proc.returncode:
                for _, other, _, h in running:
                    other.terminate()
                    other.wait()
                    h.close()
                raise SystemExit(f"{name}: failed (exit {proc.returncode})\n{log.read_text()[-4000:]}")
            print(f"{name}: done", flush=True)


def device_name(smoke: bool) -> str:
    """The GPU the runs use (the smoke runs are on the CPU)."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() and not smoke else "cpu"


def fresh(out: Path) -> Path:
    """Our own scratch folder of a run, emptied: every comparison starts from scratch."""
    if out.exists():
        shutil.rmtree(out)
    return out


def summarise(run: Run, mean_load: float) -> dict:
    """One run's numbers: final validation loss, and means over the logged steps after warm-up."""
    rows = [json.loads(line) for line in (run.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = max(r["step"] for r in rows)
    logged = [r for r in rows if "step_time_s" in r]
    train = [r for r in logged if r["step"] > steps // 5] or logged  # after warm-up and compilation
    val = [r for r in rows if "val_loss" in r]
    mean = lambda key: statistics.fmean(r[key] for r in train) if all(key in r for r in train) else None  # noqa
    cap, max_load = mean("capacity"), mean("max_expert_load")
    assert max_load is not None  # every MoE run logs it
    return {
        "router": run.entry,
        "corpus": run.corpus_name,
        "seed": run.seed,
        "val_loss": val[-1]["val_loss"],
        "cross_node_fraction": mean("cross_node_fraction"),
        "dropped_fraction": mean("dropped_fraction"),
        # the logged capacity is each layer's largest per-expert capacity (per-expert under quantile)
        "max_capacity_over_mean_load": None if cap is None else cap / mean_load,
        "max_load_over_mean": max_load / mean_load,
        "step_ms": 1e3 * statistics.median(r["step_time_s"] for r in train),
        "run_dir": str(run.out),
    }
