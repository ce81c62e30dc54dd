"""Corpora: token streams per domain with a train/validation split.

Sources are files or folders of plain text, JSONL (``text`` and optional ``domain`` per row) or
pre-tokenised binary (uint16/uint32, memory-mapped). With no sources, the corpus is the Python standard
library's own source files on this machine: real text, nothing to download.
"""
from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from locmoe.config.schema import DataConfig
from locmoe.errors import LocMoEError


class DataError(LocMoEError):
    """A data source that is missing, empty or malformed."""


@dataclass
class Corpus:
    """Token streams keyed by domain; ``train[d]`` and ``val[d]`` are 1-D integer arrays."""
    train: dict = field(default_factory=dict)
    val: dict = field(default_factory=dict)
    vocab_size: int = 256
    description: str = ""

    def tokens(self, split: str = "train") -> int:
        return int(sum(len(s) for s in getattr(self, split).values()))


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"data source {path} is an empty folder")
        return files
    if not path.exists():
        raise DataError(f"data source {path} does not exist")
    return [path]


def _format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    return {".jsonl": "jsonl", ".bin": "bin_uint16", ".u16": "bin_uint16", ".u32": "bin_uint32"}.get(
        path.suffix, "text")


def _read_texts(path: Path, fmt: str, domain: int, max_bytes: int) -> list[tuple[int, str]]:
    """(domain, text) pieces of one text or JSONL file."""
    raw = path.read_bytes()[:max_bytes or None].decode("utf-8", errors="replace")
    if fmt == "text":
        return [(domain, raw)]
    pieces = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{path}:{n}: each JSONL row needs a string 'text' field")
        pieces.append((int(row.get("domain", domain)), row["text"]))
    return pieces


def load_corpus(cfg: DataConfig, tokenizer, num_domains: int) -> Corpus:
    """Read every source into per-domain token streams and split off the last val_fraction of each."""
    streams: dict[int, list[np.ndarray]] = {}
    if cfg.sources:
        sources = [(Path(s.path), s.format, s.domain) for s in cfg.sources]
        description = ", ".join(s.path for s in cfg.sources)
    else:
        sources = [(p, "text", 0) for p in stdlib_files()]
        description = f"Python standard library sources ({len(sources)} files)"
    for path, declared, domain in sources:
        for f in _files(path):
            fmt = _format(f, declared)
            if fmt.startswith("bin_"):
                dtype = np.uint16 if fmt == "bin_uint16" else np.uint32
                streams.setdefault(domain, []).append(np.memmap(f, dtype=dtype, mode="r").astype(np.int64))
                continue
            for dom, text in _read_texts(f, fmt, domain, cfg.max_bytes):
                if not text.strip():
                    continue  # an empty file adds nothing; if all are empty the corpus is empty
                if not 0 <= dom < num_domains:
                    raise DataError(f"{f}: domain {dom} must be in [0, {num_domains}) (moe.domains.num_domains)")
                streams.setdefault(dom, []).append(tokenizer.encode(text + "\n"))
    corpus = Corpus(vocab_size=tokenizer.vocab_size, description=description)
    for dom, parts in sorted(streams.items()):
        tokens = np.concatenate(parts)
        n_val = max(int(len(tokens) * cfg.val_fraction), cfg.seq_len + 1)
        if len(tokens) - n_val < cfg.seq_len + 1:
            raise DataError(f"domain {dom} of {description} holds {len(tokens)} tokens, too few for a training "
                            f"and a validation sequence of {cfg.seq_len + 1} tokens")
        corpus.train[dom], corpus.val[dom] = tokens[:-n_val], tokens[-n_val:]
    if not corpus.train:
        raise DataError(f"the corpus ({description}) is empty")
    too_big = [int(s.max()) for s in corpus.train.values() if s.max() >= tokenizer.vocab_size]
    if too_big:
        raise DataError(f"token id {max(too_big)} is outside the tokenizer's vocabulary ({tokenizer.vocab_size})")
    return corpus
