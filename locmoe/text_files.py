"""Reading a small text or JSON file that a user names on the command line (prompts, profiles, calibrations,
placements): whatever the file holds (binary, another encoding, the wrong JSON type), the reader raises the
caller's own error with one line naming the flag and the file, never a UnicodeDecodeError or a TypeError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from locmoe.errors import LocMoEError


def read_text(path: str | Path, what: str, error: type[LocMoEError]) -> str:
    """The UTF-8 text of ``path``; ``error`` naming ``what`` (e.g. ``--prompts``) and the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(f"{what} {path}: cannot read it ({err.strerror or err})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(
            f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None


def read_json(path: str | Path, what: str, error: type[LocMoEError], kind: type = dict) -> Any:
    """The JSON value of ``path``, which must be a ``kind`` (an object by default)."""
    text = read_text(path, what, error)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{what} {path} is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        expected = {dict: "an object", list: "a list"}.get(kind, kind.__name__)
        raise error(f"{what} {path} must hold a JSON {expected}, not {type(value).__name__} {str(value)[:40]}")
    return value
