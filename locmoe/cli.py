"""``locmoe`` command line: one subcommand per job, each with its own ``--help``.

Heavy imports (torch, mindspore, scipy) happen inside the handlers so that ``locmoe --help`` and the
planning commands start fast on machines without a framework.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _train(args: argparse.Namespace) -> int:
    from locmoe.config import load_config
    import backends

    cfg = load_config(args.config, args.set)
    backends.get(cfg.parallel.backend).train(cfg, resume=args.resume)
    return 0


def _export(args: argparse.Namespace) -> int:
    from locmoe.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"exported routers to {out}")
    return 0


def _route_demo(args: argparse.Namespace) -> int:
    from locmoe import demo

    demo.run(args)
    return 0


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML job file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.out_dir")


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (train.out_dir/checkpoints/step_N) or a run's out_dir")
    p.add_argument("out_dir", help="where to write router.safetensors and manifest.json")


def _add_route_demo(p: argparse.ArgumentParser) -> None:
    from locmoe import demo

    demo.add_arguments(p)


def _add_plan(p: argparse.ArgumentParser) -> None:
    from locmoe.planning import cli as plan_cli

    plan_cli.add_arguments(p)


def _add_bench(p: argparse.ArgumentParser) -> None:
    from locmoe import bench_cli

    bench_cli.add_arguments(p)


def _delegate(module: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).main(args)
    return handler


COMMANDS = {
    "train": ("pretrain an MoE model from a YAML job (torchrun / msrun launch it on many ranks)", _add_train, _train),
    "export": ("export the routers of a checkpoint for serving", _add_export, _export),
    "plan": ("expert placement and deployment planning from routing traces", _add_plan,
             _delegate("locmoe.planning.cli")),
    "bench": ("benchmarks: calibrate the expert cost model, prefill throughput, capacity bound", _add_bench,
              _delegate("locmoe.bench_cli")),
    "route-demo": ("route a random batch on an emulated cluster and compare routers", _add_route_demo, _route_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locmoe", description="LocMoE: MoE training and serving with a "
                                     "router that keeps tokens close to home.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from locmoe.checkpointing import CheckpointError
    from locmoe.config import ConfigError
    from locmoe.data import DataError
    from locmoe.export import ExportError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"locmoe {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, ExportError) as err:
        print(f"locmoe {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
