"""Indexed token datasets: ``PREFIX.bin`` (tokens) + ``PREFIX.idx`` (index) in the byte layout of Megatron-LM's
MMapIndexedDataset (``megatron/core/datasets/indexed_dataset.py``): files written here are read by Megatron's
``IndexedDataset``, and files from Megatron's ``preprocess_data.py`` are read here.

``PREFIX.idx``, little-endian::

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    u64       version, 1
    u8        dtype code of the tokens: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
    u64       S: number of sequences
    u64       D: number of document-index entries (documents + 1)
    i32[S]    sequence lengths, in tokens
    i64[S]    sequence pointers: byte offset of each sequence in PREFIX.bin
    i64[D]    document index: the sequence each document starts at; 0 first, S last
    i8[S]     optional sequence modes (Megatron reads them only for multimodal datasets)

``PREFIX.bin`` holds the tokens of every sequence back to back.

What LocMoE adds, all of it invisible to Megatron's reader:

- the **domain of each document is the mode of its sequences** (the optional i8[S] block, so domains 0..127);
- ``PREFIX.locmoe.json``, a sidecar with the tokenizer's fingerprint, the vocabulary, the largest token id and
  the counts per domain: training checks the vocabulary without reading the tokens, and refuses a dataset
  prepared with another tokenizer. Without the sidecar (a dataset from Megatron's tools) every document belongs
  to the source's ``domain``, the modes are ignored, and the tokens are scanned once at start-up.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from locmoe.data.errors import DataError
from locmoe.data.stream import FileTokens

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 9 + 8 + 1 + 8 + 8
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF = {np.dtype(t): c for c, t in DTYPE_CODES.items()}
MAX_SEQUENCE = 2**31 - 1  # sequence lengths are int32: a longer document is split into sequences
META_FORMAT, META_VERSION = "locmoe-indexed", 1
CHUNK = 1 << 20  # index entries checked at a time (bounded memory for any dataset size)


def idx_path(prefix: Path) -> Path:
    return Path(f"{prefix}.idx")


def bin_path(prefix: Path) -> Path:
    return Path(f"{prefix}.bin")


def meta_path(prefix: Path) -> Path:
    return Path(f"{prefix}.locmoe.json")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype Megatron's reader knows that holds ids 0 .. vocab_size - 1."""
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.int32)


def write_index(path: Path, dtype, lengths: np.ndarray, domains: Optional[np.ndarray]) -> None:
    """Write ``PREFIX.idx`` for documents of ``lengths`` tokens stored back to back, each with its domain (or
    none). A document longer than MAX_SEQUENCE becomes several sequences, as Megatron's layout allows."""
    lengths = np.asarray(lengths, dtype=np.int64)
    pieces = np.maximum(-(-lengths // MAX_SEQUENCE), 1)  # sequences per document
    seq_doc = np.repeat(np.arange(len(lengths)), pieces)
    first = np.concatenate([[0], np.cumsum(pieces)])  # document index, D = documents + 1
    within = np.arange(len(seq_doc)) - first[seq_doc]
    seq_len = np.minimum(lengths[seq_doc] - within * MAX_SEQUENCE, MAX_SEQUENCE)
    pointers = np.concatenate([[0], np.cumsum(seq_len)[:-1]]) * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", 1) + struct.pack("<B", CODE_OF[np.dtype(dtype)]))
        f.write(struct.pack("<Q", len(seq_len)) + struct.pack("<Q", len(first)))
        f.write(seq_len.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(first.astype("<i8").tobytes())
        if domains is not None:
            f.write(np.asarray(domains)[seq_doc].astype(np.int8).tobytes())


@dataclass(kw_only=True)
class IndexedDataset:
    """An opened, checked PREFIX.bin + PREFIX.idx: counts and, when the index has sequence modes, the runs of
    consecutive sequences sharing a mode (domain, first token, tokens; int64 [R] each). Nothing stays mapped."""

    prefix: Path
    dtype: np.dtype
    n_sequences: int
    documents: int
    n_tokens: int
    runs: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]
    meta: Optional[dict] = None

    def tokens(self) -> FileTokens:
        """All tokens of PREFIX.bin, read on demand in their own dtype."""
        return FileTokens(bin_path(self.prefix), self.dtype, 0, self.n_tokens)

    def arrays(self) -> dict:
        """The index's arrays in full (lengths, pointers, doc_index, modes): for tools and tests, not training."""
        idx = idx_path(self.prefix)
        S, D = self.n_sequences, self.documents + 1
        read = lambda dt, n, at: np.fromfile(idx, dtype=dt, count=n, offset=at)  # noqa: E731
        out: dict[str, Optional[np.ndarray]] = {
            "lengths": read("<i4", S, HEADER_BYTES),
            "pointers": read("<i8", S, HEADER_BYTES + 4 * S),
            "doc_index": read("<i8", D, HEADER_BYTES + 12 * S),
        }
        out["modes"] = read(np.int8, S, HEADER_BYTES + 12 * S + 8 * D) if self.runs is not None else None
        return out


def open_indexed(prefix: Path) -> IndexedDataset:
    """Open and check PREFIX.idx / PREFIX.bin (and PREFIX.locmoe.json if present); DataError names the file."""
    idx, binf = idx_path(prefix), bin_path(prefix)
    for p, other in ((idx, binf), (binf, idx)):
        if not p.is_file():
            raise DataError(
                f"indexed dataset {prefix}: {p} is missing (found {other.name} only)"
                if other.is_file()
                else f"indexed dataset {prefix}: neither {idx} nor {binf} exists"
            )
    size = idx.stat().st_size
    with open(idx, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:9] != MAGIC:
        raise DataError(f"{idx}: not an indexed-dataset index (no MMIDIDX header)")
    version, code = struct.unpack("<Q", head[9:17])[0], head[17]
    n_seq, n_doc = struct.unpack("<QQ", head[18:34])
    if version != 1:
        raise DataError(f"{idx}: index version {version}; only version 1 is supported")
    if code not in DTYPE_CODES or np.dtype(DTYPE_CODES[code]).kind not in "iu":
        raise DataError(
            f"{idx}: dtype code {code} is not an integer token type "
            f"(allowed: {sorted(c for c, t in DTYPE_CODES.items() if np.dtype(t).kind in 'iu')})"
        )
    expected = HEADER_BYTES + 12 * n_seq + 8 * n_doc
    if size not in (expected, expected + n_seq) or n_doc < 1:
        raise DataError(
            f"{idx}: {size} bytes does not match its header ({n_seq} sequences, {n_doc} "
            f"document-index entries: expected {expected} or {expected + n_seq})"
        )
    dtype = np.dtype(DTYPE_CODES[code])
    n_tokens, runs = _scan_index(idx, n_seq, dtype.itemsize, expected if size > expected else None)
    ends = np.fromfile(idx, dtype="<i8", count=n_doc, offset=HEADER_BYTES + 12 * n_seq)[[0, -1]]
    if ends[0] != 0 or ends[1] != n_seq:
        raise DataError(
            f"{idx}: the document index must run from 0 to {n_seq} (the sequence count), "
            f"found {int(ends[0])} .. {int(ends[1])}"
        )
    bin_size = binf.stat().st_size
    if bin_size != n_tokens * dtype.itemsize:
        raise DataError(
            f"{binf}: {bin_size} bytes, but {idx} indexes {n_tokens} {dtype.name} tokens "
            f"({n_tokens * dtype.itemsize} bytes): the two halves do not belong together"
        )
    if n_tokens == 0:
        raise DataError(f"indexed dataset {prefix} holds no tokens")
    ds = IndexedDataset(
        prefix=Path(prefix), dtype=dtype, n_sequences=n_seq, documents=n_doc - 1, n_tokens=n_tokens, runs=runs
    )
    ds.meta = read_meta(ds)
    return ds


def _scan_index(idx: Path, n_seq: int, itemsize: int, modes_at: Optional[int]):
    """One pass over the index in CHUNK-entry reads: total tokens, the mode runs (if ``modes_at``), and a
    DataError unless lengths >= 0 and each sequence starts where the previous one ends."""
    total, run_dom, run_start, prev = 0, [], [], -1000  # -1000: no int8 mode
    with open(idx, "rb") as f:
        for a in range(0, n_seq, CHUNK):
            n = min(CHUNK, n_seq - a)
            ln = _read(f, HEADER_BYTES + 4 * a, "<i4", n).astype(np.int64)
            ptr = _read(f, HEADER_BYTES + 4 * n_seq + 8 * a, "<i8", n)
            if ln.min() < 0:
                raise DataError(f"{idx}: negative sequence length {int(ln.min())}")
            starts = total + np.concatenate([[0], np.cumsum(ln)[:-1]])
            bad = np.flatnonzero(ptr != starts * itemsize)
            if len(bad):
                i = a + int(bad[0])
                raise DataError(
                    f"{idx}: sequence {i} starts at byte {int(ptr[bad[0]])}, not "
                    f"{int(starts[bad[0]]) * itemsize} where the previous one ends (only back-to-back "
                    "sequences are supported)"
                )
            if modes_at is not None:  # a run starts where the mode differs from the sequence before
                modes = _read(f, modes_at + a, np.int8, n).astype(np.int64)
                first = np.flatnonzero(modes != np.concatenate([[prev], modes[:-1]]))
                run_dom.append(modes[first])
                run_start.append(starts[first])
                prev = int(modes[-1])
            total += int(ln.sum())
    if modes_at is None:
        return total, None
    doms = np.concatenate(run_dom or [[]]).astype(np.int64)
    tok_start = np.concatenate(run_start or [[]]).astype(np.int64)
    return total, (doms, tok_start, np.diff(np.append(tok_start, total)))


def _read(f, at: int, dtype, n: int) -> np.ndarray:
    f.seek(at)
    return np.frombuffer(f.read(n * np.dtype(dtype).itemsize), dtype=dtype)


def read_meta(ds: IndexedDataset) -> Optional[dict]:
    """PREFIX.locmoe.json checked against the index, or None when there is none."""
    path = meta_path(ds.prefix)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    ints = ("documents", "tokens", "max_token", "vocab_size")
    if (
        not isinstance(meta, dict)
        or meta.get("format") != META_FORMAT
        or meta.get("version") != META_VERSION
        or any(type(meta.get(k)) is not int for k in ints)
        or not isinstance(meta.get("tokenizer"), str)
        or type(meta.get("document_domains")) is not bool
    ):
        raise DataError(
            f"{path}: not a {META_FORMAT} v{META_VERSION} sidecar (needs integer {', '.join(ints)}, "
            "a string 'tokenizer' and a boolean 'document_domains')"
        )
    if (meta["documents"], meta["tokens"], meta.get("dtype")) != (ds.documents, ds.n_tokens, ds.dtype.name):
        raise DataError(
            f"{path}: records {meta['documents']} documents / {meta['tokens']} {meta.get('dtype')} tokens "
            f"but {idx_path(ds.prefix)} holds {ds.documents} / {ds.n_tokens} {ds.dtype.name}"
        )
    if meta["document_domains"] and ds.runs is None:
        raise DataError(f"{path}: records per-document domains but {idx_path(ds.prefix)} has no sequence modes")
    return meta
