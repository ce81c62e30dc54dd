"""Where the ranks' heartbeats live: the :class:`Store` protocol and a directory-backed :class:`FileStore`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Protocol


class Store(Protocol):
    """The few operations liveness needs. ``get`` returns None for a missing key and must not wait for it;
    ``get_many`` reads keys that exist, in one round trip where the store can; ``setdefault`` sets a key only
    if it is missing. A store may also have ``alive() -> bool``: False when it is known to be gone, and
    ``close()``, called when the rank leaves."""

    def set(self, key: str, value: str) -> None: ...

    def get(self, key: str) -> Optional[str]: ...

    def get_many(self, keys: list) -> list: ...

    def setdefault(self, key: str, value: str) -> None: ...


class StoreGone(ConnectionError):
    """The store is gone: its ``alive()`` said so, or its client lost the connection (the text says which)."""


class FileStore:
    """Keys as files in a directory every rank sees (the run directory: checkpoints need it shared anyway)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def set(self, key: str, value: str) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(value)
        os.replace(tmp, path)  # readers see the old value or the new one, never half of it

    def get(self, key: str) -> Optional[str]:
        try:
            return self._path(key).read_text()
        except FileNotFoundError:
            return None

    def get_many(self, keys: list) -> list:
        return [self.get(k) for k in keys]

    def setdefault(self, key: str, value: str) -> None:
        try:
            with open(self._path(key), "x") as f:  # exclusive create: an existing value stays
                f.write(value)
        except FileExistsError:
            pass

    def _path(self, key: str) -> Path:
        return self.root / key.replace("/", "__")
