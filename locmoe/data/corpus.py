"""Corpora: token streams per domain with a train/validation split.

Sources are files or folders of plain text, JSONL (``text`` and optional ``domain`` per row), pre-tokenised
binary (uint16/uint32) or an indexed dataset (PREFIX.bin + PREFIX.idx, made by ``locmoe data prepare`` or by
Megatron's tools); see :mod:`locmoe.data.sources`. With no sources, the corpus is the Python standard
library's own source files on this machine: real text, nothing to download.

Binary and indexed tokens stay on disk in their own dtype and text tokens are kept in the smallest
dtype of the vocabulary; the validation split is a view of the same data. Only the windows the sampler
draws are converted to int64, so a rank's memory does not grow with the corpus.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from locmoe.config.schema import DataConfig
from locmoe.data.errors import DataError
from locmoe.data.sources import ReadContext, read, resolve
from locmoe.data.stream import TokenStream

__all__ = ["Corpus", "DataError", "load_corpus", "stdlib_files"]


@dataclass
class Corpus:
    """Token streams keyed by domain; ``train[d]`` and ``val[d]`` are 1-D token sequences (TokenStream:
    ``len`` and contiguous slices, which return int64 copies)."""

    train: dict = field(default_factory=dict)
    val: dict = field(default_factory=dict)
    vocab_size: int = 256
    description: str = ""

    def tokens(self, split: str = "train") -> int:
        return int(sum(len(s) for s in getattr(self, split).values()))


def stdlib_files() -> list[Path]:
    """The standard library's ``*.py`` files outside ``site-packages`` and ``test`` folders (a walk that does
    not enter those: every rank of a run lists them, and ``rglob`` through them took a second)."""
    files = []
    for folder, subdirs, names in os.walk(sysconfig.get_paths()["stdlib"]):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "test")]
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return sorted(files)


def load_corpus(cfg: DataConfig, tokenizer, num_domains: int) -> Corpus:
    """Read every source into per-domain token streams and split off the last val_fraction of each.

    Every check runs here, before training writes anything: missing, empty or malformed files, token ids
    outside the vocabulary (in either split), domains, and a split that leaves a split with nothing to sample.
    """
    ctx = ReadContext(tokenizer, num_domains, cfg.max_bytes)
    if cfg.sources:
        sources = [(Path(s.path), s.format, s.domain) for s in cfg.sources]
        description = ", ".join(s.path for s in cfg.sources)
    else:
        sources = [(p, "text", 0) for p in stdlib_files()]
        description = f"Python standard library sources ({len(sources)} files)"
        ctx.strict_utf8 = False  # our own fallback corpus: a stray byte in an installed file is no user error
    streams: dict[int, list[TokenStream]] = {}
    for path, declared, domain in sources:
        for f, fmt in resolve(path, declared):
            for dom, piece in read(f, fmt, domain, ctx):
                streams.setdefault(dom, []).append(piece)
    corpus = Corpus(vocab_size=tokenizer.vocab_size, description=description)
    for dom, parts in sorted(streams.items()):
        tokens = TokenStream.concat(parts)
        n_val = max(int(len(tokens) * cfg.val_fraction), cfg.seq_len + 1)
        if len(tokens) - n_val < cfg.seq_len + 1:
            raise DataError(
                f"domain {dom} of {description} holds {len(tokens)} tokens, too few for a training "
                f"and a validation sequence of {cfg.seq_len + 1} tokens once data.val_fraction = "
                f"{cfg.val_fraction} of them ({n_val}) is held out"
            )
        corpus.train[dom], corpus.val[dom] = tokens.split(len(tokens) - n_val)
    if not corpus.train:
        raise DataError(f"the corpus ({description}) is empty")
    for split in ("train", "val"):
        check_windows(corpus, split, cfg)
    return corpus


def check_windows(corpus: Corpus, split: str, cfg: DataConfig) -> None:
    """The sampler draws a domain in proportion to len - seq_len - 1: a split where that is 0 for every
    domain has nothing to draw (today's validation would crash at the end of the run; refuse it at start)."""
    sizes = {d: len(s) for d, s in getattr(corpus, split).items()}
    if sum(n - cfg.seq_len - 1 for n in sizes.values()) <= 0:
        name = "validation" if split == "val" else "training"
        raise DataError(
            f"the {name} split of {corpus.description} leaves nothing to sample: each domain holds "
            f"only seq_len + 1 = {cfg.seq_len + 1} tokens there ({sizes}); it needs at least "
            f"{cfg.seq_len + 2}: raise data.val_fraction (now {cfg.val_fraction}), lower data.seq_len "
            "or add data"
        )
