"""The configs shipped with locmoe, found by name from any directory, and the one rule for config paths.

The repository's top-level ``configs/`` folder is the single source: a source checkout or an editable install
reads it in place, a built wheel carries it as ``locmoe/configs/`` (``setup.py`` maps it there).

How a config reference is resolved (``locmoe train REF --with REF``, and every entry of ``defaults:``):

1. A path that exists: relative to the working directory when typed on the command line (``CONFIG`` and
   ``--with``), relative to the file that names it for ``defaults:``.
2. Otherwise a shipped config, by name or by its path under ``configs/``: ``tiny_cpu``, ``tiny_cpu.yaml``,
   ``configs/tiny_cpu.yaml``, ``routers/gshard`` -- or just ``gshard`` when that stem is unique.

Paths *inside* a config (``data.sources[].path``, ``data.tokenizer``, ``train.out_dir``, ``export.dir``) are
not config references: they resolve against the working directory of the run, like any command-line path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import locmoe
from locmoe.config.errors import ConfigError

SUFFIX = ".yaml"


def configs_dir() -> Path:
    """The folder of shipped configs: ``locmoe/configs`` in an installed wheel, else the checkout's ``configs/``."""
    package = Path(locmoe.__file__).resolve().parent
    installed = package / "configs"
    if installed.is_dir():
        return installed
    checkout = package.parent
    if (checkout / "setup.py").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    raise FileNotFoundError(f"no shipped configs next to {package}: a broken install (reinstall locmoe)")


@dataclass(frozen=True)
class ShippedConfig:
    name: str  # path under configs/ without .yaml, e.g. "tiny_cpu" or "routers/gshard"
    path: Path
    description: str  # the file's first comment line

    @property
    def kind(self) -> str:
        return "fragment" if "/" in self.name else "job"


def shipped_configs() -> list[ShippedConfig]:
    """Every shipped YAML file, jobs first, then fragments (router variants), each sorted by name."""
    root = configs_dir()
    found = []
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        name = path.relative_to(root).with_suffix("").as_posix()
        found.append(ShippedConfig(name, path, _description(path)))
    return sorted(found, key=lambda c: (c.kind != "job", c.name))


def _description(path: Path) -> str:
    """The first sentence of a YAML file's leading comment (its summary); indented example lines end it."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line[1:] if line.startswith("#") else None
        if text is None or not text.strip() or text.startswith("   "):
            break
        words.append(text.strip())
    summary = " ".join(words)
    depth = 0
    for i, ch in enumerate(summary):  # the first full stop outside parentheses ("(Wang et al. 2024)")
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "." and depth <= 0 and summary[i + 1 : i + 2] in ("", " "):
            return summary[: i + 1]
    return summary


def find_shipped(ref: str) -> Optional[Path]:
    """The shipped config a name or ``configs/``-relative path means, or None."""
    text = ref.replace("\\", "/").strip()
    if text.startswith("./"):
        text = text[2:]
    if text.startswith("configs/"):
        text = text[len("configs/") :]
    if text.endswith(SUFFIX):
        text = text[: -len(SUFFIX)]
    if not text or text.startswith("/") or ".." in text.split("/"):
        return None
    configs = shipped_configs()
    exact = [c for c in configs if c.name == text]
    if exact:
        return exact[0].path
    by_stem = [c for c in configs if c.name.rsplit("/", 1)[-1] == text]
    return by_stem[0].path if len(by_stem) == 1 else None


def resolve_config_ref(ref: str | Path, base: Path | None = None) -> Path:
    """The file a config reference names (module docstring: an existing path, else a shipped config).

    ``base`` is the directory a relative path is read from: the working directory for command-line references
    (None), the including file's folder for ``defaults:``. Raises :class:`ConfigError` naming what was tried."""
    path = Path(ref).expanduser()
    candidate = path if path.is_absolute() or base is None else base / path
    if candidate.is_file():
        return candidate.resolve()
    if candidate.is_dir():
        raise ConfigError("", f"config file {candidate} is a directory; name a .yaml file")
    if not path.is_absolute():
        shipped = find_shipped(str(ref))
        if shipped is not None:
            return shipped
    where = f"relative to {base}" if base is not None and not path.is_absolute() else ""
    names = ", ".join(c.name for c in shipped_configs())
    raise ConfigError(
        "",
        f"config file not found: {candidate} {where}".rstrip()
        + f"; and {str(ref)!r} names no shipped config (shipped: {names}; `locmoe configs` lists them)",
    )
