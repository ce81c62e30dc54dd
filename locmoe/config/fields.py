"""Field declarations for the typed config: a default, a one-line doc and the allowed values.

Every config field is declared with :func:`spec` so that the loader can check it generically: the type
comes from the dataclass annotation, the allowed values from the rules given here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_MISSING = dataclasses.MISSING


def spec(
    default: Any = _MISSING,
    doc: str = "",
    *,
    factory: Any = _MISSING,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
) -> Any:
    """Declare a config field.

    Args:
        default: the default value (immutable values only; use ``factory`` for lists and nested configs).
        doc: what the field means, kept in the field's ``metadata["doc"]`` beside its rules.
        factory: a zero-argument callable producing the default.
        choices: the allowed values.
        ge, gt, le, lt: numeric bounds (inclusive / exclusive). Every float field must also be finite (the
            loader refuses ``.inf`` and ``nan``), every int field a 64-bit integer; give an upper bound where an
            absurd value breaks the run (sizes need none: the memory plan refuses what cannot be allocated).
        nonempty: a string that must not be empty or blank (e.g. a path whose empty value would mean the
            working directory).
    """
    rules = {k: v for k, v in dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if nonempty:
        rules["nonempty"] = True
    metadata = {"doc": doc, "rules": rules}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe_rules(rules: dict) -> str:
    """Human-readable statement of what a field allows, e.g. ``one of ['a', 'b']`` or ``>= 0``."""
    parts = []
    if rules.get("nonempty"):
        parts.append("a non-empty string")
    if "choices" in rules:
        parts.append(f"one of {list(rules['choices'])}")
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in rules:
            parts.append(f"{sym} {rules[key]}")
    return " and ".join(parts)


def violates(value: Any, rules: dict) -> bool:
    """True when ``value`` breaks one of ``rules`` (lists are checked element by element)."""
    if isinstance(value, list):
        return any(violates(v, rules) for v in value)
    if rules.get("nonempty") and isinstance(value, str) and not value.strip():
        return True
    if "choices" in rules and value not in rules["choices"]:
        return True
    checks = {"ge": lambda a, b: a >= b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b, "lt": lambda a, b: a < b}
    return any(key in rules and not ok(value, rules[key]) for key, ok in checks.items())
