"""Framework backends behind one interface: ``backends.get("torch")`` or ``backends.get("mindspore")``.

Each backend package exposes the same surface (see ``backends.interface``). A framework that is not
installed is a clear error naming the extra to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"torch": "torch", "mindspore": "mindspore"}


class BackendUnavailable(ImportError):
    """The chosen backend's framework is not installed."""


def get(name: str) -> ModuleType:
    """Import and return the backend package ``backends.<name>``."""
    if name not in EXTRAS:
        raise ValueError(f"parallel.backend: unknown backend {name!r}; allowed: {sorted(EXTRAS)}")
    try:
        importlib.import_module(name)
    except ImportError as err:
        raise BackendUnavailable(
            f"parallel.backend = {name!r}, but {name} is not installed ({err}); install it with "
            f"`pip install 'locmoe[{EXTRAS[name]}]'`") from None
    return importlib.import_module(f"backends.{name}")
