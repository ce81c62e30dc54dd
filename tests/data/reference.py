"""The data path as it was before lazy reading: every source read eagerly into one int64 array per domain, and
the sampler over those arrays. Kept as the reference the lazy path must reproduce batch for batch (exact
resume and every seed-fixed result depend on it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from locmoe.data.corpus import stdlib_files


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]


def load_eager(cfg, tokenizer) -> tuple[dict, dict]:
    """(train, val): domain -> int64 array, exactly as the old load_corpus built them."""
    streams: dict[int, list[np.ndarray]] = {}
    sources = [(Path(s.path), s.format, s.domain) for s in cfg.sources] or [(p, "text", 0) for p in stdlib_files()]
    for path, declared, domain in sources:
        for f in _files(path):
            fmt = (
                declared
                if declared != "auto"
                else {".jsonl": "jsonl", ".bin": "bin_uint16", ".u16": "bin_uint16", ".u32": "bin_uint32"}.get(
                    f.suffix, "text"
                )
            )
            if fmt.startswith("bin_"):
                dtype = np.uint16 if fmt == "bin_uint16" else np.uint32
                streams.setdefault(domain, []).append(np.memmap(f, dtype=dtype, mode="r").astype(np.int64))
                continue
            raw = f.read_bytes()[: cfg.max_bytes or None].decode("utf-8", errors="replace")
            rows = (
                [(domain, raw)]
                if fmt == "text"
                else [
                    (int(r.get("domain", domain)), r["text"])
                    for r in map(json.loads, filter(str.strip, raw.splitlines()))
                ]
            )
            for dom, text in rows:
                if text.strip():
                    streams.setdefault(dom, []).append(tokenizer.encode(text + "\n"))
    train, val = {}, {}
    for dom, parts in sorted(streams.items()):
        tokens = np.concatenate(parts)
        n_val = max(int(len(tokens) * cfg.val_fraction), cfg.seq_len + 1)
        train[dom], val[dom] = tokens[:-n_val], tokens[-n_val:]
    return train, val


def batch_eager(
    streams: dict, seq_len: int, B: int, rank: int, world: int, seed: int, step: int, micro: int, split: str
):
    """The old BatchSampler.batch over int64 arrays."""
    domains = sorted(streams)
    windows = np.array([len(streams[d]) - seq_len - 1 for d in domains], dtype=np.float64)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, step, micro])
    n = B * world
    pick = rng.choice(len(domains), size=n, p=windows / windows.sum())
    starts = (rng.random(n) * (windows[pick] + 1)).astype(np.int64)
    rows = slice(rank * B, (rank + 1) * B)
    seqs = np.stack([streams[domains[p]][s : s + seq_len + 1] for p, s in zip(pick[rows], starts[rows])])
    return seqs[:, :-1].copy(), seqs[:, 1:].copy(), np.asarray(domains)[pick[rows]].astype(np.int64)
