"""Hugging Face data formats: a parquet file, an Arrow IPC file (file or stream format) or a ``datasets``
folder written by ``Dataset.save_to_disk``, each with a string ``text`` column and an optional integer
``domain`` column (extra columns are ignored). A row is one document, as a JSONL row is.

They are read a block at a time: a parquet row group, or about BLOCK_BYTES of text rows of an Arrow table
(memory-mapped, so a block costs memory only for its own rows). ``locmoe data prepare`` tokenises the
blocks in worker processes; training reads them in order. pyarrow and ``datasets`` parse the files; they
are an optional extra (``locmoe[hf-data]``), imported only when such a source is read.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locmoe.data.errors import DataError

FORMATS = ("parquet", "arrow", "datasets")
SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
BLOCK_BYTES = 8 << 20  # text bytes per block of an Arrow table: the unit of work of `locmoe data prepare`
EXTRA = "pip install 'locmoe[hf-data]'"
COLUMNS_HELP = "a string 'text' column and an optional integer 'domain' column"


@dataclass(frozen=True)
class Block:
    """Rows [start, stop) of a source; ``group``: its parquet row group (-1 for Arrow tables)."""

    start: int
    stop: int
    nbytes: int
    group: int = -1


def is_dataset_folder(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (a DatasetDict's folder holds one per split)."""
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _pyarrow(path: Path, fmt: str) -> Any:
    """pyarrow, with its submodules compute and parquet loaded (attributes the module alone does not type)."""
    try:
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401  (pa.compute is a submodule, not loaded by `import pyarrow`)
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise DataError(f"{path}: reading {fmt} sources needs pyarrow and datasets: {EXTRA}") from None
    return pa


@functools.lru_cache(maxsize=8)
def _open(path: str, fmt: str, _stamp: tuple) -> Any:
    """The opened source (``_stamp``: size and mtime, so that a rewritten file is opened again): a ParquetFile
    for parquet, else a pyarrow Table; callers branch on ``fmt``."""
    pa = _pyarrow(Path(path), fmt)
    try:
        if fmt == "parquet":
            return pa.parquet.ParquetFile(path)
        if fmt == "arrow":
            source = pa.memory_map(path)
            try:
                return pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:  # datasets' own .arrow files are in the stream format
                return pa.ipc.open_stream(pa.memory_map(path)).read_all()
        return _dataset(Path(path))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable {fmt} source ({err})") from None


def _dataset(path: Path):
    """The memory-mapped table of a save_to_disk folder (the dataset's row order, indices applied)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a datasets folder needs the datasets package: {EXTRA}") from None
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits")
        raise DataError(f"{path} holds a DatasetDict (splits {splits}): give one split's folder, e.g. {path}/train")
    return datasets.load_from_disk(str(path), keep_in_memory=False).with_format("arrow")[:]


def opened(path: Path, fmt: str):
    st = os.stat(path)  # a folder's mtime changes when save_to_disk writes it again
    source = _open(str(path), fmt, (st.st_size, st.st_mtime_ns))
    _check_schema(path, _schema(source, fmt))
    return source


def _schema(source, fmt: str):
    return source.schema_arrow if fmt == "parquet" else source.schema


def _check_schema(path: Path, schema) -> None:
    pa = _pyarrow(path, "arrow")
    names = schema.names
    if "text" not in names or not (pa.types.is_string(schema.field("text").type) or _large(pa, schema, "text")):
        raise DataError(f"{path}: needs {COLUMNS_HELP}; its columns are {dict(zip(names, map(str, schema.types)))}")
    if "domain" in names and not pa.types.is_integer(schema.field("domain").type):
        raise DataError(f"{path}: column 'domain' is {schema.field('domain').type}; it needs integers")


def _large(pa, schema, name: str) -> bool:
    return pa.types.is_large_string(schema.field(name).type) or pa.types.is_string_view(schema.field(name).type)


def blocks(path: Path, fmt: str) -> list[Block]:
    """The blocks of one source, in row order."""
    source = opened(path, fmt)
    if fmt == "parquet":
        meta, out, start = source.metadata, [], 0
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            out.append(Block(start, start + rows, meta.row_group(g).total_byte_size, g))
            start += rows
        return out
    pa = _pyarrow(path, fmt)
    sizes = pa.compute.binary_length(source.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
    out, start, total = [], 0, 0
    for row, size in enumerate(sizes.tolist()):
        total += size
        if total >= BLOCK_BYTES:
            out.append(Block(start, row + 1, total))
            start, total = row + 1, 0
    if start < len(sizes):
        out.append(Block(start, len(sizes), total))
    return out


def documents(path: Path, fmt: str, block: Block, domain: int) -> list[tuple[int, str]]:
    """(domain, text) of every row of one block; ``domain`` for a source without a domain column."""
    source = opened(path, fmt)
    columns = ["text", "domain"] if "domain" in _schema(source, fmt).names else ["text"]
    if fmt == "parquet":
        table = source.read_row_group(block.group, columns=columns)
    else:
        table = source.select(columns).slice(block.start, block.stop - block.start)
    texts = table.column("text").to_pylist()
    doms = table.column("domain").to_pylist() if "domain" in columns else [domain] * len(texts)
    for i, (text, dom) in enumerate(zip(texts, doms)):
        if text is None:
            raise DataError(f"{path}: row {block.start + i} has no text (null); {COLUMNS_HELP}")
        if dom is None or dom < 0:
            raise DataError(f"{path}: row {block.start + i}: 'domain' must be a non-negative integer, got {dom}")
    return list(zip(doms, texts))
