"""What every ``locmoe`` parser shares: help that shows each default, one-line usage errors (exit 2), checked
number types for flags, and ``--set`` taking several values.

Number flags use the types below (``int_at_least(0)``, ``float_in(gt=0)``...) so a bad value such as
``--max-tokens -5`` or ``--rate nan`` is refused by argparse itself: exit 2, one line naming the flag.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, Optional


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with ``(default: X)`` after every option whose default is a value (not None, not a
    flag's False) and whose help does not already state it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or default is None
            or default is argparse.SUPPRESS
            or action.required
            or not action.option_strings
            or isinstance(default, bool)
            or default == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose subparsers are Parsers too, whose help shows defaults, and whose usage
    errors are one line (``locmoe plan place: error: argument --max-tokens: ...``), exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: Callable, text: str) -> float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number")
    return value


def _bounded(
    kind: Callable, ge: Optional[float], gt: Optional[float], le: Optional[float], lt: Optional[float]
) -> Callable[[str], Any]:  # the parser returns a ``kind`` (int or float)
    rules = [
        (ge, ">=", lambda a, b: a >= b),
        (gt, ">", lambda a, b: a > b),
        (le, "<=", lambda a, b: a <= b),
        (lt, "<", lambda a, b: a < b),
    ]
    rules = [(bound, sym, ok) for bound, sym, ok in rules if bound is not None]
    allowed = " and ".join(f"{sym} {bound:g}" for bound, sym, _ in rules)

    def parse(text: str):
        value = _number(kind, text)
        if not all(ok(value, bound) for bound, _, ok in rules):
            raise argparse.ArgumentTypeError(f"{text} is not allowed: must be {allowed}")
        return value

    parse.__name__ = f"{kind.__name__} {allowed}".strip()  # what argparse names in its own messages
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An ``int`` flag type that refuses values below ``low``."""
    return _bounded(int, low, None, None, None)


def float_in(
    ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None, lt: Optional[float] = None
) -> Callable[[str], float]:
    """A finite ``float`` flag type within the given bounds (inclusive ``ge``/``le``, exclusive ``gt``/``lt``)."""
    return _bounded(float, ge, gt, le, lt)


finite_float = float_in()


def add_set_argument(
    p: argparse.ArgumentParser,
    metavar: str = "SECTION.FIELD=VALUE",
    example: str = "train.steps=50 moe.num_experts=16",
    what: str = "config fields",
) -> None:
    """``--set A=1 B=2`` (several values, and repeatable): one flat list in ``args.set``."""
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar=metavar,
        help=f"override {what}, e.g. --set {example}; takes several values and may be repeated; "
        "each value is YAML (8, 1e-3, [0, 1], true); applied last",
    )


def print_error(command: str, message: str) -> int:
    """The one line a failed subcommand prints on stderr; returns the exit code 2."""
    print(f"locmoe {command}: {message}", file=sys.stderr)
    return 2
