"""``locmoe data prepare``: tokenise text/JSONL/parquet/arrow/datasets sources once into an indexed dataset
(PREFIX.bin + PREFIX.idx + PREFIX.locmoe.json, see :mod:`locmoe.data.indexed`) that training reads lazily
without re-tokenising.

Work is cut into units (a text file; about CHUNK_BYTES of a JSONL file, at a line boundary; a block of rows
of a parquet / arrow / datasets source, :mod:`locmoe.data.arrow_source`) tokenised by
worker processes and collected in order, so the output does not depend on the number of workers. Documents
are grouped by domain (stable): each domain's stream is then one contiguous run, exactly the stream that
training on the same text sources would build. Everything is written in a temporary folder beside PREFIX and
renamed into place at the end (the .idx last); on any failure nothing is left behind.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from locmoe import run_lock
from locmoe.config import ConfigError
from locmoe.data import arrow_source, indexed
from locmoe.data.errors import DataError
from locmoe.data.sources import decode, encode, parse_jsonl, resolve
from locmoe.data.tokenizer import load_tokenizer, tokenizer_file

CHUNK_BYTES = 8 << 20
MAX_DOMAINS = 128  # domains are stored as Megatron's int8 sequence modes
_TOKENIZER = None  # set in each worker by _init_worker


@dataclass(frozen=True, kw_only=True)
class Unit:
    path: Path
    fmt: str
    domain: int
    start: int
    end: int
    block: arrow_source.Block | None = None  # rows of a parquet / arrow / datasets source (start, end unused)

    @property
    def size(self) -> int:
        """Bytes of text, for the progress bar."""
        return self.block.nbytes if self.block is not None else self.end - self.start


def plan_units(sources: list[str], fmt: str, domain: int) -> list[Unit]:
    """Work units of every source, in order: about CHUNK_BYTES of a text/JSONL file, or one block (a parquet
    row group, about BLOCK_BYTES of an Arrow table's rows)."""
    units = []
    for src in sources:
        for path, kind in resolve(Path(src), fmt):
            if kind in arrow_source.FORMATS:
                blocks = arrow_source.blocks(path, kind)
                units += [Unit(path=path, fmt=kind, domain=domain, start=0, end=0, block=b) for b in blocks]
                continue
            if kind not in ("text", "jsonl"):
                raise DataError(
                    f"{path}: locmoe data prepare reads text and jsonl sources, not {kind} "
                    "(those are tokenised already: train on them directly)"
                )
            size = path.stat().st_size
            cuts = _line_cuts(path, size) if kind == "jsonl" else [0, size]
            units += [Unit(path=path, fmt=kind, domain=domain, start=a, end=b) for a, b in zip(cuts[:-1], cuts[1:])]
    return units


def _line_cuts(path: Path, size: int) -> list[int]:
    """Offsets 0 < ... < size cutting a file after a newline about every CHUNK_BYTES."""
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + CHUNK_BYTES < size:
            f.seek(cuts[-1] + CHUNK_BYTES)
            while (block := f.read(1 << 16)) and b"\n" not in block:
                pass
            if not block:
                break
            cuts.append(f.tell() - len(block) + block.index(b"\n") + 1)
    return cuts + [size] if cuts[-1] < size else cuts


def _init_worker(spec: str) -> None:
    global _TOKENIZER
    _TOKENIZER = load_tokenizer(spec)


def _work(unit: Unit):
    """(documents [(domain, tokens)], lines, error) of one unit; a bad row comes back as its relative line."""
    if unit.block is not None:  # its errors name the row already
        pieces = arrow_source.documents(unit.path, unit.fmt, unit.block, unit.domain)
        docs = encode(unit.path, pieces, _TOKENIZER, MAX_DOMAINS, "indexed datasets keep domains as int8")
        return docs, unit.block.stop - unit.block.start, None
    with open(unit.path, "rb") as f:
        f.seek(unit.start)
        raw = f.read(unit.end - unit.start)
    text = decode(unit.path, raw, truncated=False, offset=unit.start)
    try:
        pieces = [(unit.domain, text)] if unit.fmt == "text" else parse_jsonl(unit.path, text, unit.domain)
    except DataError as err:  # a bad row: its line counts from this unit's start
        return [], 0, (err.line, err.reason)
    docs = encode(unit.path, pieces, _TOKENIZER, MAX_DOMAINS, "indexed datasets keep domains as int8")
    return docs, raw.count(b"\n"), None


def _results(units: list[Unit], spec: str, workers: int):
    if workers <= 1 or len(units) <= 1:
        _init_worker(spec)
        yield from map(_work, units)
        return
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (spec,)) as pool:
        yield from pool.imap(_work, units)


def prepare(
    sources: list[str],
    out: str,
    tokenizer: str = "byte",
    workers: int = 1,
    domain: int = 0,
    fmt: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenise ``sources`` into ``out``.bin/.idx/.locmoe.json; returns the summary that is also recorded."""
    t0 = time.perf_counter()
    try:
        tokenizer_file(tokenizer)
    except ConfigError as err:  # its message names data.tokenizer; here the flag is --tokenizer
        raise DataError(f"--tokenizer: {str(err).removeprefix('data.tokenizer: ')}") from None
    if not 0 <= domain < MAX_DOMAINS:
        raise DataError(f"--domain {domain} must be in [0, {MAX_DOMAINS}) (domains are stored as int8)")
    tok = load_tokenizer(tokenizer)
    prefix = Path(out)
    finals = [indexed.bin_path(prefix), indexed.meta_path(prefix), indexed.idx_path(prefix)]  # .idx last
    existing = [str(p) for p in finals if p.exists()]
    if existing and not overwrite:
        raise DataError(f"--out {out}: {', '.join(existing)} already exist(s); pass --overwrite to replace")
    units = plan_units(sources, fmt, domain)
    if not prefix.parent.is_dir():
        raise DataError(f"--out {out}: folder {prefix.parent} does not exist")
    remove_dead_leftovers(prefix)
    tmp = prefix.parent / f"{_temp_name(prefix)}{os.getpid()}"  # hidden: training folders skip it
    renamed: list[Path] = []
    try:
        run_lock.acquire(tmp)  # makes tmp; its flock tells a later prepare that this one is alive
        lengths, bins, max_token = _tokenise(units, tokenizer, workers, progress, tmp, tok)
        meta = _finish(tmp, prefix, tok, lengths, bins, max_token, sources)
        for p in finals:  # the .idx last: until it exists, readers see no dataset
            os.replace(tmp / p.name, p)
            renamed.append(p)
    except BaseException as err:
        for p in renamed:
            p.unlink(missing_ok=True)
        if isinstance(err, OSError):  # unreadable source, read-only or full disk: one line
            full = " (disk full)" if err.errno == errno.ENOSPC else ""
            raise DataError(f"{err.filename or out}: {err.strerror or err}{full}; nothing was written") from None
        raise
    finally:
        run_lock.release(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return meta


def _temp_name(prefix: Path) -> str:
    return f".{prefix.name}.prepare-"


def remove_dead_leftovers(prefix: Path) -> list[Path]:
    """Remove the temporary folders that earlier prepares of ``prefix`` left when killed (-9, OOM): those whose
    lock no live process holds (``run_lock.in_use``, the test the run directories' stale locks pass), or,
    without a lock file (a locmoe before it), whose pid in the name is not running. Returns what it removed."""
    removed = []
    for tmp in prefix.parent.glob(_temp_name(prefix) + "*"):
        pid = tmp.name[len(_temp_name(prefix)) :]
        if not tmp.is_dir() or not pid.isdigit() or run_lock.in_use(tmp):
            continue
        if not (tmp / run_lock.LOCK_FILE).exists() and run_lock.pid_alive(int(pid)):
            continue  # no lock yet: a prepare between making its folder and locking it, or an older locmoe's
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _tokenise(units, spec, workers, progress, tmp, tok):
    """Tokens of every unit appended to one temporary file per domain; (lengths per domain, files, max id)."""
    from tqdm import tqdm

    dtype = indexed.token_dtype(tok.vocab_size)
    lengths: dict[int, array] = {}
    files: dict[int, BinaryIO] = {}
    lines: dict[Path, int] = {}
    max_token = -1
    bar = tqdm(
        total=sum(u.size for u in units),
        unit="B",
        unit_scale=True,
        desc="tokenising",
        disable=not progress,
        file=sys.stderr,
    )
    results = _results(units, spec, workers)
    try:
        for unit, (docs, n_lines, row_error) in zip(units, results):
            if row_error is not None:
                raise DataError(f"{unit.path}:{lines.get(unit.path, 0) + row_error[0]}: {row_error[1]}")
            lines[unit.path] = lines.get(unit.path, 0) + n_lines
            for dom, tokens in docs:
                if dom not in files:
                    files[dom], lengths[dom] = open(tmp / f"domain_{dom}.bin", "wb"), array("q")
                files[dom].write(tokens.astype(dtype, copy=False).tobytes())
                lengths[dom].append(len(tokens))
                if len(tokens):
                    max_token = max(max_token, int(tokens.max()))
            bar.update(unit.size)
    finally:
        results.close()  # ends the worker pool now, also on an error
        bar.close()
        for f in files.values():
            f.close()
    if not lengths:
        raise DataError("locmoe data prepare: the sources hold no text")
    return lengths, {d: tmp / f"domain_{d}.bin" for d in files}, max_token


def _finish(tmp: Path, prefix: Path, tok, lengths: dict, bins: dict, max_token: int, sources: list) -> dict:
    """Write the final .bin (domains in order), .idx and sidecar into ``tmp``; returns the sidecar."""
    doms = sorted(lengths)
    dtype = indexed.token_dtype(tok.vocab_size)
    out_bin = tmp / indexed.bin_path(prefix).name
    if len(doms) == 1:
        os.replace(bins[doms[0]], out_bin)
    else:
        with open(out_bin, "wb") as out:
            for d in doms:
                with open(bins[d], "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
    all_lengths = np.concatenate([np.frombuffer(lengths[d], dtype=np.int64) for d in doms])
    domains = np.repeat(np.array(doms, dtype=np.int64), [len(lengths[d]) for d in doms])
    indexed.write_index(tmp / indexed.idx_path(prefix).name, dtype, all_lengths, domains)
    meta = {
        "format": indexed.META_FORMAT,
        "version": indexed.META_VERSION,
        "dtype": dtype.name,
        "documents": int(len(all_lengths)),
        "tokens": int(all_lengths.sum()),
        "max_token": max_token,
        "tokenizer": tok.fingerprint,
        "tokenizer_name": tok.name,
        "vocab_size": tok.vocab_size,
        "document_domains": True,
        "sources": [str(s) for s in sources],
        "domains": {str(d): {"documents": len(lengths[d]), "tokens": int(sum(lengths[d]))} for d in doms},
    }
    (tmp / indexed.meta_path(prefix).name).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta
