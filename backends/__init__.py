"""Framework backends behind one interface: ``backends.get("torch")`` or ``backends.get("mindspore")``.

Each backend package is a :class:`locmoe.backend_api.Backend` (the Protocol says what locmoe's commands call);
``backends.get(name).server()`` is its :class:`~locmoe.backend_api.Server` (serving: the torch backend's).
A framework that is not installed is a :class:`BackendUnavailable` (a project error: exit code 2, one line)
naming the install command that works.
"""

from __future__ import annotations

import importlib
from typing import cast

from locmoe.backend_api import Backend
from locmoe.errors import LocMoEError

EXTRAS = {"torch": "torch", "mindspore": "mindspore"}

# The command that installs each framework. torch first and explicitly: the bare `torch` requirement of the
# extra resolves to a multi-GB CUDA build on most machines. MindSpore's extra also pins numpy < 2.
INSTALL = {"torch": "pip install torch==2.13.0", "mindspore": "pip install 'locmoe[mindspore]'"}
NOTE = {"torch": " (the CPU build; for a CUDA build follow pytorch.org's selector)", "mindspore": ""}


class BackendUnavailable(LocMoEError):
    """The chosen backend's framework is not installed."""


def install_hint(framework: str) -> str:
    """``"<framework> is not installed: install it with `...`"``: the one line every subcommand prints."""
    return f"{framework} is not installed: install it with `{INSTALL[framework]}`{NOTE[framework]}"


def missing_framework(err: ImportError) -> str | None:
    """The framework (``torch``/``mindspore``) whose absence raised ``err``, or None for any other import."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    return name if name in INSTALL else None


def require(framework: str, what: str = "") -> None:
    """Raise :class:`BackendUnavailable` unless ``framework`` imports; ``what`` names who needs it."""
    try:
        importlib.import_module(framework)
    except ImportError as err:
        missing = missing_framework(err) or framework
        need = f"{what} needs {framework}, but " if what else ""
        raise BackendUnavailable(need + install_hint(missing)) from None


def get(name: str, what: str = "") -> Backend:
    """Import and return the backend package ``backends.<name>``; ``what`` names who needs it (a missing
    framework's line says so), by default the job's ``parallel.backend``."""
    if name not in EXTRAS:
        raise BackendUnavailable(f"parallel.backend: unknown backend {name!r}; allowed: {sorted(EXTRAS)}")
    require(name, what or f"parallel.backend = {name!r}")
    return cast(Backend, importlib.import_module(f"backends.{name}"))
