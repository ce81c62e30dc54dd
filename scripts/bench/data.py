"""Resident memory and samples/s of reading a tokenised corpus: the old path (the whole uint16 stream
memory-mapped and copied into an int64 array) against the lazy paths that read each window from the file in
its own dtype (bin_uint16, and the indexed dataset with and without its sidecar's recorded largest id, which
decides whether start-up scans the tokens in 16 MiB reads). A last row slices the windows from a memory-map
instead of reading them: no copy either, but each random window maps a whole page-cache folio into the
process (RssFile), which is why the lazy paths read with pread.

Each path runs in its own process, so every baseline is that process's own resident memory after its imports.
"Above baseline" numbers are VmRSS minus that baseline (RssAnon = private memory, RssFile = mapped file pages,
which the kernel shares between ranks and can drop); "peak" is VmHWM minus the baseline. The corpus is
synthetic uint16 tokens in documents of ~2k tokens, written to a temporary folder and removed afterwards.

    python scripts/bench/data.py [--size-gb 1] [--batches 2000] [--out bench_results/data.json]
    python scripts/bench/data.py --smoke          # 10 MB, a few batches: seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from locmoe.data import indexed  # noqa: E402
from locmoe.report import format_table, write_json  # noqa: E402

VOCAB = 32000
PATHS = (
    "int64 copy (before)",
    "bin_uint16, lazy",
    "indexed + sidecar, lazy",
    "indexed scanned, lazy",
    "bin_uint16, memmap windows",
)
GOAL_MB = 200


def status_mb() -> dict:
    """VmRSS, RssAnon, RssFile, VmHWM of this process, in MB (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def build(folder: Path, size_gb: float, seed: int = 0) -> Path:
    """PREFIX.bin of synthetic uint16 tokens, its .idx and sidecar (prefix 'corpus'), and a second prefix
    'bare' (hard links of the same .bin/.idx, no sidecar); returns the folder."""
    n_tokens = int(size_gb * 1e9) // 2
    rng = np.random.default_rng(seed)
    with open(folder / "corpus.bin", "wb") as f:
        for a in range(0, n_tokens, 1 << 25):
            f.write(rng.integers(0, VOCAB, min(1 << 25, n_tokens - a), dtype=np.uint16).tobytes())
    lengths = rng.integers(1024, 3072, n_tokens // 2048 + 2)
    lengths = lengths[np.cumsum(lengths) <= n_tokens]
    lengths = np.append(lengths, n_tokens - lengths.sum())
    indexed.write_index(folder / "corpus.idx", np.uint16, lengths, None)
    meta = {
        "format": indexed.META_FORMAT,
        "version": indexed.META_VERSION,
        "dtype": "uint16",
        "documents": len(lengths),
        "tokens": n_tokens,
        "max_token": VOCAB - 1,
        "tokenizer": "synthetic",
        "tokenizer_name": "synthetic",
        "vocab_size": VOCAB,
        "document_domains": False,
    }
    (folder / "corpus.locmoe.json").write_text(json.dumps(meta))
    for suffix in (".bin", ".idx"):
        os.link(folder / f"corpus{suffix}", folder / f"bare{suffix}")
    return folder


class SyntheticTokenizer:
    vocab_size, fingerprint, name = VOCAB, "synthetic", "synthetic"


def open_corpus(path: str, folder: Path, seq_len: int):
    """The corpus of one path, as training would hold it."""
    from locmoe.config.schema import DataConfig, DataSource
    from locmoe.data import Corpus, load_corpus

    if path == PATHS[0]:  # the code before: np.memmap(...).astype(np.int64), then views for the split
        tokens = np.memmap(folder / "corpus.bin", dtype=np.uint16, mode="r").astype(np.int64)
        n_val = max(int(len(tokens) * 0.05), seq_len + 1)
        return Corpus({0: tokens[:-n_val]}, {0: tokens[-n_val:]}, VOCAB, "int64 copy")
    if path == PATHS[4]:  # the road not taken: windows sliced from a memory-map (no copy, but see file_mb)
        from locmoe.data import TokenStream

        whole = TokenStream.of([np.memmap(folder / "corpus.bin", dtype=np.uint16, mode="r").view(np.ndarray)])
        train, val = whole.split(len(whole) - max(int(len(whole) * 0.05), seq_len + 1))
        return Corpus({0: train}, {0: val}, VOCAB, "memmap")
    source = {
        PATHS[1]: DataSource(path=str(folder / "corpus.bin"), format="bin_uint16"),
        PATHS[2]: DataSource(path=str(folder / "corpus"), format="indexed"),
        PATHS[3]: DataSource(path=str(folder / "bare"), format="indexed"),
    }[path]
    return load_corpus(DataConfig(sources=[source], seq_len=seq_len), SyntheticTokenizer(), 1)


def worker(path: str, folder: Path, args) -> dict:
    """Measure one path in this (fresh) process."""
    from locmoe.data import BatchSampler

    base = status_mb()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    t0 = time.perf_counter()
    corpus = open_corpus(path, folder, args.seq_len)
    load_s = time.perf_counter() - t0
    loaded = status_mb()
    sampler = BatchSampler(corpus, args.seq_len, args.batch, rank=0, world=1, seed=0)
    t0 = time.perf_counter()
    for step in range(args.batches):
        x, y, d = sampler.batch(step)
    sample_s = time.perf_counter() - t0
    assert x.dtype == np.int64 and x.shape == (args.batch, args.seq_len)
    end = status_mb()
    above = lambda k, s: round(s[k] - base[k], 1)  # noqa: E731
    return {
        "path": path,
        "load_s": round(load_s, 3),
        "rss_loaded_mb": above("VmRSS", loaded),
        "rss_after_mb": above("VmRSS", end),
        "anon_mb": above("RssAnon", end),
        "file_mb": above("RssFile", end),
        "peak_mb": round(max(end["VmHWM"], loaded["VmHWM"]) - base["VmRSS"], 1),
        "samples_per_s": round(args.batches * args.batch / sample_s, 1),
        "measured": True,
    }


def computed_before(folder: Path) -> dict:
    """The old path's memory when there is not enough free RAM to measure it: 8 bytes per token."""
    mb = (folder / "corpus.bin").stat().st_size * 4 / 2**20
    return {
        "path": PATHS[0],
        "rss_loaded_mb": round(mb, 1),
        "rss_after_mb": round(mb, 1),
        "anon_mb": round(mb, 1),
        "peak_mb": round(mb, 1),
        "measured": False,
    }


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_all(folder: Path, args) -> list[dict]:
    rows = []
    for path in PATHS:
        if path == PATHS[0] and available_mb() < 1.5 * (folder / "corpus.bin").stat().st_size * 4 / 2**20:
            rows.append(computed_before(folder))
            continue
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            path,
            "--data",
            str(folder),
            "--batch",
            str(args.batch),
            "--seq-len",
            str(args.seq_len),
            "--batches",
            str(args.batches),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if proc.returncode != 0:
            raise SystemExit(f"{path}: worker failed\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=1.0, help="synthetic corpus size (default: %(default)s)")
    p.add_argument("--batches", type=int, default=2000, help="batches sampled per path (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="sequences per batch (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--work", default=None, help="folder for the temporary corpus (default: the system's temp)")
    p.add_argument("--out", default="bench_results/data.json", help="JSON output (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="10 MB corpus, 20 batches of 4 x 128: seconds")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data), args)))
        return
    if args.smoke:
        args.size_gb, args.batches, args.batch, args.seq_len = 0.01, 20, 4, 128
    folder = Path(tempfile.mkdtemp(prefix="locmoe-bench-data-", dir=args.work))
    try:
        t0 = time.perf_counter()
        build(folder, args.size_gb)
        build_s = time.perf_counter() - t0
        rows = run_all(folder, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"{args.size_gb:g} GB of uint16 tokens (built in {build_s:.1f}s), {args.batches} batches of "
        f"{args.batch} x {args.seq_len}; MB above each process's baseline:"
    )
    print(
        format_table(
            rows,
            [
                "path",
                "load_s",
                "rss_loaded_mb",
                "rss_after_mb",
                "anon_mb",
                "file_mb",
                "peak_mb",
                "samples_per_s",
                "measured",
            ],
            floatfmt=".1f",
        )
    )
    new = [r for r in rows if r["path"] in PATHS[1:4]]
    meets = all(max(r["rss_after_mb"], r["peak_mb"]) < GOAL_MB for r in new)
    print(
        f"goal: every lazy path < {GOAL_MB} MB above baseline (after sampling and at peak): "
        f"{'met' if meets else 'NOT met'}"
    )
    path = write_json(
        args.out, {"args": vars(args), "build_s": build_s, "goal_mb": GOAL_MB, "meets_goal": meets, "rows": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
