"""Reading one configured data source into per-domain token pieces, with every check that names the file.

Formats: ``text`` (a file is one document), ``jsonl`` (a row is one document: string ``text``, optional integer
``domain``), ``bin_uint16`` / ``bin_uint32`` (raw tokens), ``indexed`` (PREFIX.bin + PREFIX.idx, see
:mod:`locmoe.data.indexed`). ``auto`` picks by name: ``.jsonl``; ``.idx``, a prefix whose ``.bin``/``.idx``
exist, or a ``.bin`` with an ``.idx`` beside it is indexed; another ``.bin`` or ``.u16`` is bin_uint16, ``.u32``
bin_uint32; ``.parquet`` is parquet, ``.arrow`` arrow, and a folder written by ``Dataset.save_to_disk``
datasets (rows as JSONL's, read a block at a time: :mod:`locmoe.data.arrow_source`); anything else is text.

Text must be UTF-8: a file that is not is refused (DataError naming the file and the byte), because silently
replacing bytes would train on corrupted text. The one exception is the character that ``data.max_bytes``
cuts in two at the end of a text file's read, which is replaced as before; a JSONL file's read ends after its
last whole row (the cut, not the file, made the row partial). Binary and indexed sources stay on disk in
their own dtype, read a window at a time (:class:`~locmoe.data.stream.FileTokens`); their token ids are
checked against the vocabulary in 16 MiB reads (or, for a prepared indexed dataset, from the sidecar's
recorded largest id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from locmoe.data import arrow_source, indexed
from locmoe.data.errors import DataError
from locmoe.data.stream import FileTokens, TokenStream, scan_minmax

BIN_DTYPES = {"bin_uint16": np.uint16, "bin_uint32": np.uint32}
SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".bin": "bin_uint16",
    ".u16": "bin_uint16",
    ".u32": "bin_uint32",
    **arrow_source.SUFFIXES,
}


@dataclass
class ReadContext:
    """What every source is checked against."""

    tokenizer: Any  # a locmoe.data.tokenizer tokenizer (byte or Hugging Face): vocab_size, encode
    num_domains: int
    max_bytes: int = 0
    strict_utf8: bool = True

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def resolve(path: Path, declared: str) -> list[tuple[Path, str]]:
    """(file or indexed prefix, format) of every input of one source, in a stable order."""
    if path.is_dir() and declared in ("auto", "datasets") and _datasets_folder(path):
        return [(path, "datasets")]
    if path.is_dir():
        found = _folder(path, declared)
        if not found:
            raise DataError(
                f"data source {path} holds no .bin/.idx pair (format: indexed)"
                if declared == "indexed"
                else f"data source {path} holds no folder written by save_to_disk (format: datasets)"
                if declared == "datasets"
                else f"data source {path} is an empty folder"
            )
        return found
    if declared in ("auto", "indexed"):
        prefix = _indexed_prefix(path, declared == "indexed")
        if prefix is not None:
            return [(prefix, "indexed")]
    if not path.exists():
        raise DataError(f"data source {path} does not exist")
    return [(path, declared if declared != "auto" else SUFFIX_FORMATS.get(path.suffix, "text"))]


def _indexed_prefix(path: Path, declared: bool):
    """The prefix if ``path`` names an indexed dataset (prefix, .idx, or .bin beside an .idx), else None."""
    if path.suffix == ".idx":
        return path.with_suffix("")
    if path.suffix == ".bin":
        return path.with_suffix("") if declared or indexed.idx_path(path.with_suffix("")).exists() else None
    if declared or (not path.exists() and (indexed.idx_path(path).exists() or indexed.bin_path(path).exists())):
        return path
    return None


def _datasets_folder(path: Path) -> bool:
    """A save_to_disk folder, or a DatasetDict's (which arrow_source refuses, naming its splits)."""
    return arrow_source.is_dataset_folder(path) or (path / "dataset_dict.json").is_file()


def _folder(path: Path, declared: str) -> list[tuple[Path, str]]:
    """Inputs of a folder: each indexed pair once (at its .idx), each save_to_disk folder once, every other
    file by its format."""
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()  # hidden files and folders (.git, a running
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )  # prepare) skipped
    datasets = {d for d in {p.parent for p in files} if declared in ("auto", "datasets") and _datasets_folder(d)}
    if declared == "datasets":
        return [(d, "datasets") for d in sorted(datasets)]
    files = sorted([p for p in files if not datasets.intersection(p.parents)] + list(datasets))
    names = {str(p) for p in files}
    out = []
    for p in files:
        if p in datasets:
            out.append((p, "datasets"))
            continue
        sidecar_of = str(p)[: -len(".locmoe.json")] if p.name.endswith(".locmoe.json") else None
        if sidecar_of is not None and f"{sidecar_of}.idx" in names:
            continue
        if declared in ("auto", "indexed") and p.suffix == ".idx":
            out.append((p.with_suffix(""), "indexed"))
        elif declared in ("auto", "indexed") and p.suffix == ".bin" and str(p.with_suffix(".idx")) in names:
            continue  # listed with its .idx
        elif declared == "indexed":
            if p.suffix == ".bin":
                out.append((p.with_suffix(""), "indexed"))  # its .idx is missing: open_indexed says so
        else:
            out.append((p, declared if declared != "auto" else SUFFIX_FORMATS.get(p.suffix, "text")))
    return out


def read(path: Path, fmt: str, domain: int, ctx: ReadContext) -> list[tuple[int, TokenStream]]:
    """(domain, tokens) pieces of one file or indexed prefix, checked."""
    if fmt in BIN_DTYPES:
        return [(domain, _binary(path, np.dtype(BIN_DTYPES[fmt]), fmt, ctx))]
    if fmt == "indexed":
        return _indexed(path, domain, ctx)
    if fmt in arrow_source.FORMATS:
        return _rows(path, fmt, domain, ctx)
    return [(dom, TokenStream.of([tokens])) for dom, tokens in _texts(path, fmt, domain, ctx)]


def _binary(path: Path, dtype: np.dtype, fmt: str, ctx: ReadContext) -> TokenStream:
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: the {fmt} file is empty")
    if size % dtype.itemsize:
        raise DataError(
            f"{path}: {size} bytes is not a multiple of {dtype.itemsize} ({fmt} tokens are "
            f"{dtype.itemsize} bytes): truncated, or another dtype?"
        )
    _check_ids(path, *scan_minmax(path, dtype), ctx)
    return TokenStream.of([FileTokens(path, dtype)])


def _check_ids(origin, lo: int, hi: int, ctx: ReadContext) -> None:
    if hi >= ctx.vocab_size or lo < 0:
        bad = hi if hi >= ctx.vocab_size else lo
        raise DataError(f"{origin}: token id {bad} is outside the tokenizer's vocabulary [0, {ctx.vocab_size})")


def _indexed(prefix: Path, domain: int, ctx: ReadContext) -> list[tuple[int, TokenStream]]:
    ds = indexed.open_indexed(prefix)
    meta = ds.meta
    if meta is not None:
        mine = getattr(ctx.tokenizer, "fingerprint", "?")
        if meta["tokenizer"] != mine or meta["vocab_size"] != ctx.vocab_size:
            raise DataError(
                f"{indexed.meta_path(prefix)}: prepared with tokenizer {meta.get('tokenizer_name')!r} "
                f"({meta['tokenizer']}, vocabulary {meta['vocab_size']}), but data.tokenizer is "
                f"{mine} (vocabulary {ctx.vocab_size}): prepare it again with that tokenizer"
            )
        lo, hi = 0, meta["max_token"]
    else:
        lo, hi = scan_minmax(indexed.bin_path(prefix), ds.dtype, 0, ds.n_tokens)
    _check_ids(indexed.bin_path(prefix), lo, hi, ctx)
    base = [ds.tokens()]
    if meta is None or not meta["document_domains"]:
        return [(domain, TokenStream(base, [0], [0], [ds.n_tokens]))]
    assert ds.runs is not None  # ds.meta refuses per-document domains without sequence modes
    doms, starts, lens = ds.runs
    bad = doms[(doms < 0) | (doms >= ctx.num_domains)]
    if len(bad):
        raise DataError(
            f"{indexed.idx_path(prefix)}: document domain {int(bad[0])} must be in "
            f"[0, {ctx.num_domains}) (moe.domains.num_domains)"
        )
    return [
        (int(d), TokenStream(base, np.zeros(int((doms == d).sum())), starts[doms == d], lens[doms == d]))
        for d in np.unique(doms)
    ]


def _rows(path: Path, fmt: str, domain: int, ctx: ReadContext) -> list[tuple[int, TokenStream]]:
    """(domain, tokens) of a parquet / arrow / datasets source, a block at a time: each block's documents
    are tokenised as JSONL rows are (so the same text gives the same stream) and joined per domain, in
    order. ``data.max_bytes`` counts the rows' UTF-8 text and, as for JSONL, keeps whole rows only."""
    pieces, left = [], ctx.max_bytes or -1
    for block in arrow_source.blocks(path, fmt):
        docs = arrow_source.documents(path, fmt, block, domain)
        if left >= 0:
            docs, left = _within(path, docs, left, ctx.max_bytes, first=not pieces)
        by_domain: dict[int, list[np.ndarray]] = {}
        for dom, tokens in encode(path, docs, ctx.tokenizer, ctx.num_domains, "moe.domains.num_domains"):
            by_domain.setdefault(dom, []).append(tokens)
        pieces += [(dom, TokenStream.of([np.concatenate(parts)])) for dom, parts in by_domain.items()]
        if left == 0:
            break
    return pieces


def _within(path: Path, docs: list, left: int, max_bytes: int, first: bool) -> tuple[list, int]:
    """The leading documents whose text fits in ``left`` more bytes, and the bytes left after them (0: stop)."""
    for n, (_, text) in enumerate(docs):
        size = len(text.encode("utf-8"))
        if size > left:
            if first and n == 0:
                raise DataError(
                    f"{path}: its first row is longer than data.max_bytes ({max_bytes} bytes); raise "
                    "data.max_bytes (0 = read every row) so that at least one whole row fits"
                )
            return docs[:n], 0
        left -= size
    return docs, left


def decode(path: Path, raw: bytes, truncated: bool, strict: bool = True, offset: int = 0) -> str:
    """UTF-8 text of (a part at byte ``offset`` of) a file; DataError naming the file and the byte for
    anything that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        cut_at_end = truncated and err.reason == "unexpected end of data" and err.start >= len(raw) - 3
        if cut_at_end or not strict:
            return raw.decode("utf-8", errors="replace")
        raise DataError(
            f"{path}: byte {offset + err.start} is not valid UTF-8 ({err.reason}); text and jsonl "
            "sources must be UTF-8 (convert it, e.g. iconv -f latin1 -t utf-8)"
        ) from None


def row_error(path: Path, line: int, reason: str) -> DataError:
    """A bad JSONL row; ``line`` counts from the start of the text parsed (prepare adds its chunk's offset)."""
    err = DataError(f"{path}:{line}: {reason}")
    err.line, err.reason = line, reason
    return err


def parse_jsonl(path: Path, text: str, domain: int) -> list[tuple[int, str]]:
    """(domain, text) of each non-blank row; the row's ``domain`` must be a JSON integer."""
    pieces = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise row_error(path, n, f"not valid JSON ({err})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise row_error(path, n, "each JSONL row needs a string 'text' field")
        dom = row.get("domain", domain)
        if type(dom) is not int or dom < 0:  # bool is an int subclass, 0.7 a float: neither is a domain id
            raise row_error(path, n, f"'domain' must be a non-negative integer, got {json.dumps(dom)}")
        pieces.append((dom, row["text"]))
    return pieces


def _texts(path: Path, fmt: str, domain: int, ctx: ReadContext) -> list[tuple[int, np.ndarray]]:
    """(domain, tokens) of a text or JSONL file; ``data.max_bytes`` keeps whole JSONL rows only."""
    raw = path.read_bytes()
    truncated = bool(ctx.max_bytes) and len(raw) > ctx.max_bytes
    if truncated:
        raw = raw[: ctx.max_bytes]
        if fmt == "jsonl":
            raw = whole_lines(path, raw, ctx.max_bytes)
    text = decode(path, raw, truncated and fmt != "jsonl", ctx.strict_utf8)
    pieces = [(domain, text)] if fmt == "text" else parse_jsonl(path, text, domain)
    return encode(path, pieces, ctx.tokenizer, ctx.num_domains, "moe.domains.num_domains")


def whole_lines(path: Path, head: bytes, max_bytes: int) -> bytes:
    """The rows of a JSONL file's first ``max_bytes`` bytes that end there: the cut, not the file, made the
    last row partial, so it is left out rather than refused as invalid JSON."""
    end = head.rfind(b"\n")
    if end < 0:
        raise DataError(
            f"{path}: its first row is longer than data.max_bytes ({max_bytes} bytes); raise data.max_bytes "
            "(0 = read the whole file) so that at least one whole row fits"
        )
    return head[: end + 1]


def encode(
    path: Path, pieces: list[tuple[int, str]], tokenizer, num_domains: int, limit_name: str
) -> list[tuple[int, np.ndarray]]:
    """Tokens of each non-blank document (its text + a newline), in the smallest dtype of the vocabulary.
    ``locmoe data prepare`` calls this too, so a prepared dataset holds exactly the tokens training would."""
    store = indexed.token_dtype(tokenizer.vocab_size)
    out = []
    for dom, piece in pieces:
        if not piece.strip():
            continue  # an empty file adds nothing; if all are empty the corpus is empty
        if not 0 <= dom < num_domains:
            raise DataError(f"{path}: domain {dom} must be in [0, {num_domains}) ({limit_name})")
        tokens = np.asarray(tokenizer.encode(piece + "\n"))
        if len(tokens) and (int(tokens.max()) >= tokenizer.vocab_size or int(tokens.min()) < 0):
            raise DataError(
                f"{path}: the tokenizer produced id {int(tokens.max())} outside its vocabulary "
                f"[0, {tokenizer.vocab_size})"
            )
        out.append((dom, tokens.astype(store)))
    return out
