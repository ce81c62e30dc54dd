"""``locmoe`` command line: one subcommand per job, each with its own ``--help`` (every flag's help shows its
default: ``locmoe.cli.args``).

This package is the only part of ``locmoe`` that imports the framework ``backends`` (by name, through
``backends.get``); everything below it is framework-free and never reaches up.

Heavy imports (torch, mindspore, scipy) happen inside the handlers so that ``locmoe --help`` and the
planning commands start fast on machines without a framework.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


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
    "train": _module(
        "pretrain an MoE model from a YAML job (torchrun / msrun launch it on many ranks)", "locmoe.cli.train"
    ),
    "configs": _module("list the shipped configs (usable by name anywhere), or print one", "locmoe.cli.configs"),
    "export": _module("export the routers of a checkpoint for serving", "locmoe.cli.export"),
    "convert": _module("convert a checkpoint between the torch and MindSpore backends", "locmoe.cli.convert"),
    "trace": _module("record a routing trace of a checkpoint on a corpus (input of `locmoe plan`)", "locmoe.cli.trace"),
    "plan": _module("expert placement and deployment planning from routing traces", "locmoe.cli.plan"),
    "generate": _module("generate text from a checkpoint and its exported routers", "locmoe.cli.generate"),
    "report": _module("PNG plots of a training run: losses, tokens/s, routing, expert load", "locmoe.cli.report"),
    "bench": _module("benchmarks: calibrate the expert cost model, prefill throughput", "locmoe.cli.bench"),
    "data": _module("prepare training data: tokenise once into an indexed dataset (.bin + .idx)", "locmoe.cli.data"),
    "route-demo": _module("route a random batch on an emulated cluster and compare routers", "locmoe.cli.route_demo"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Every subcommand's parser, or with ``argv`` only the named subcommand's arguments (the others keep
    their name and help line): each command's module is imported only when it runs or its help is built, and
    every rank of a launch and every command a script runs starts faster."""
    from locmoe.cli.args import Parser

    parser = Parser(
        prog="locmoe", description="LocMoE: MoE training and serving with a router that keeps tokens close to home."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, (help_text, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv is None or name == named:
            add(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Bad input (a :class:`LocMoEError`, or a framework that is not installed) is one
    line on stderr and exit code 2; anything else is a bug and stays a traceback."""
    from locmoe.cli.args import print_error
    from locmoe.config import ConfigError
    from locmoe.errors import LocMoEError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except ConfigError as err:
        return print_error(args.command, f"config error: {err}")
    except LocMoEError as err:
        return print_error(args.command, f"{type(err).__name__}: {err}")
    except ImportError as err:
        hint = _missing_framework_hint(err)
        if hint is None:
            raise
        return print_error(args.command, hint)


def _missing_framework_hint(err: ImportError) -> str | None:
    """The install line for an ImportError of torch / mindspore that is really absent (not merely broken)."""
    import importlib.util

    import backends

    framework = backends.missing_framework(err)
    if framework is None:
        return None
    try:
        if importlib.util.find_spec(framework) is not None:
            return None  # installed but failing to import: a real error, keep its traceback
    except (ImportError, ValueError):
        pass
    return backends.install_hint(framework)


if __name__ == "__main__":
    sys.exit(main())
