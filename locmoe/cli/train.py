"""``locmoe train JOB [--with FRAGMENT] [--set A=1 B=2] [--resume]``: pretrain from a YAML job.

``JOB`` and each ``FRAGMENT`` are config references (``locmoe.config.shipped``): a YAML path relative to the
working directory, or a shipped config name from anywhere (``locmoe train tiny_cpu --with gshard``).
"""

from __future__ import annotations

import argparse
import sys

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
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (JOB, --with and --set merged, defaults filled in) as YAML and exit; "
        "the output is itself a JOB that loads to the same config",
    )


def main(args: argparse.Namespace) -> int:
    import backends
    from locmoe.config import dump_config, load_config
    from locmoe.config.checks import check_paths
    from locmoe.training import interrupts

    if args.trust_checkpoint:
        from locmoe.checkpoint.directory import trust_legacy_checkpoints

        trust_legacy_checkpoints(True)
    cfg = load_config(args.config, args.set, layers=args.layers)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    check_paths(cfg)
    # From here on Ctrl-C / SIGTERM end the step in progress, then the run (locmoe.training.interrupts)
    with interrupts.stop_on_signals():
        try:
            backends.get(cfg.parallel.backend).pretrain(cfg, resume=args.resume)
        except interrupts.Interrupted as err:
            _report_stop(err, cfg.train.out_dir, args)
            return err.exit_code
    return 0


def _report_stop(err, out_dir: str, args: argparse.Namespace) -> None:
    """Rank 0's one line (stderr): the newest complete checkpoint and the command that resumes from it."""
    from locmoe.checkpoint.directory import list_checkpoints
    from locmoe.parallel.topology import LaunchEnv
    from locmoe.training.interrupts import stop_line

    if LaunchEnv.from_environ().rank != 0:
        return
    command = ["locmoe", "train", args.config]
    for layer in args.layers:
        command += ["--with", layer]
    if args.set:
        command += ["--set", *args.set]
    if args.trust_checkpoint:
        command.append("--trust-checkpoint")
    sealed = list_checkpoints(out_dir)  # complete by construction (renamed once written): no hashing of GBs here
    print(stop_line(err, sealed[-1][1] if sealed else None, command), file=sys.stderr, flush=True)
