"""``locmoe trace CHECKPOINT OUT.npz``: record which experts every token chooses at every MoE layer of a
trained checkpoint, on its validation text (or other data given with ``--set data.…``). The trace feeds
``locmoe plan affinity|place|replicate``."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (out_dir/checkpoints/step_N) or a run's out_dir")
    p.add_argument("out", help="trace file to write (.npz)")
    p.add_argument("--tokens", type=int, default=65536, help="record at least this many tokens (default 65536)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    from locmoe.cli.args import add_set_argument

    add_set_argument(
        p, "data.FIELD=VALUE", "'data.sources=[{path: x.txt}]' data.seq_len=64", "the checkpoint's data section"
    )


def main(args: argparse.Namespace) -> int:
    from locmoe.placement.trace import TraceError

    for name in ("tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise TraceError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from typing import cast

    import backends
    from locmoe.backend_api import TraceRecorder

    recorder = cast(TraceRecorder, backends.get("torch"))  # the one backend that records traces
    out = recorder.record_trace(args.checkpoint, args.out, args.tokens, args.batch_size, args.set)
    print(f"wrote {out}")
    return 0
