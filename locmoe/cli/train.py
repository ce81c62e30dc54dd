"""``locmoe train JOB [--with FRAGMENT] [--set A=1 B=2] [--resume]``: pretrain from a YAML job.

``JOB`` and each ``FRAGMENT`` are config references (``locmoe.config.shipped``): a YAML path relative to the
working directory, or a shipped config name from anywhere (``locmoe train tiny_cpu --with gshard``).
"""

from __future__ import annotations

import argparse

from locmoe.cli.args import add_set_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        metavar="JOB",
        help="the job: a YAML file, or a shipped config name such as tiny_cpu (`locmoe configs` lists them)",
    )
    p.add_argument(
        "--with",
        dest="layers",
        action="append",
        default=[],
        metavar="FRAGMENT",
        help="merge a YAML fragment over JOB: a file, or a shipped name such as gshard "
        "(configs/routers/); repeatable, applied in order",
    )
    add_set_argument(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.out_dir")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="--resume from a checkpoint of an older locmoe (format 1), whose optimiser and RNG files "
        "are pickles: only for checkpoints you trust (docs/reliability.md)",
    )


def main(args: argparse.Namespace) -> int:
    import backends
    from locmoe.config import load_config
    from locmoe.config.checks import check_paths

    if args.trust_checkpoint:
        from locmoe.checkpointing import trust_legacy_checkpoints

        trust_legacy_checkpoints(True)
    cfg = load_config(args.config, args.set, layers=args.layers)
    check_paths(cfg)
    backends.get(cfg.parallel.backend).pretrain(cfg, resume=args.resume)
    return 0
