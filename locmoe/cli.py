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

    cfg = load_config(args.config, args.set, layers=args.layers)
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
    p.add_argument("--with", dest="layers", action="append", default=[], metavar="FRAGMENT.yaml",
                   help="merge a YAML fragment over CONFIG, e.g. --with configs/routers/gshard.yaml (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. --set train.steps=50 (repeatable; applied last)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.out_dir")


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (train.out_dir/checkpoints/step_N) or a run's out_dir")
    p.add_argument("out_dir", help="where to write router.safetensors and manifest.json")


def _add_route_demo(p: argparse.ArgumentParser) -> None:
    from locmoe import demo

    demo.add_arguments(p)


class _Module:
    """A subcommand whose parser and handler live in their own module (``add_arguments`` and ``main``),
    imported only when that subcommand is used or its help is built."""

    def __init__(self, module: str):
        self.module = module

    def _load(self):
        import importlib

        return importlib.import_module(self.module)

    def add(self, p: argparse.ArgumentParser) -> None:
        self._load().add_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        return self._load().main(args)


def _module(help_text: str, module: str) -> tuple[str, Callable, Callable]:
    m = _Module(module)
    return help_text, m.add, m.run


COMMANDS = {
    "train": ("pretrain an MoE model from a YAML job (torchrun / msrun launch it on many ranks)", _add_train, _train),
    "export": ("export the routers of a checkpoint for serving", _add_export, _export),
    "convert": _module("convert a checkpoint between the torch and MindSpore backends", "locmoe.convert_cli"),
    "trace": _module("record a routing trace of a checkpoint on a corpus (input of `locmoe plan`)",
                     "locmoe.placement.trace_cli"),
    "plan": _module("expert placement and deployment planning from routing traces", "locmoe.planning.cli"),
    "generate": _module("generate text from a checkpoint and its exported routers", "locmoe.inference.generate_cli"),
    "bench": _module("benchmarks: calibrate the expert cost model, prefill throughput", "locmoe.bench_cli"),
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
    from locmoe.config import ConfigError
    from locmoe.errors import LocMoEError

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
    except LocMoEError as err:
        print(f"locmoe {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
