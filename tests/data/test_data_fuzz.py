"""Bad data, every source format: ``locmoe train`` exits 2 with one line naming the file and the problem, no
traceback, and writes nothing (the run directory is never created). Runs the CLI in-process for speed."""

import json
from pathlib import Path

import numpy as np
import pytest

from locmoe import cli
from locmoe.data import indexed

ROOT = Path(__file__).resolve().parents[2]
SEQ = 16
QUIET = [
    "logging.progress=false",
    "logging.tensorboard=false",
    "export.at_end=false",
    f"data.seq_len={SEQ}",
    f"model.max_seq_len={SEQ}",
    "train.steps=2",
    "train.warmup_steps=1",
]


def tokens(n=2000, dtype=np.uint16, bad_at=None, bad=300):
    t = (np.arange(n) % 200).astype(dtype)
    if bad_at is not None:
        t[bad_at] = bad
    return t


def write_indexed(prefix, t, meta=None, modes=None):
    t.tofile(indexed.bin_path(prefix))
    indexed.write_index(indexed.idx_path(prefix), t.dtype, [len(t)], modes)
    if meta is not None:
        base = {
            "format": "locmoe-indexed",
            "version": 1,
            "dtype": t.dtype.name,
            "documents": 1,
            "tokens": len(t),
            "max_token": int(t.max()),
            "tokenizer": "byte",
            "tokenizer_name": "byte",
            "vocab_size": 256,
            "document_domains": modes is not None,
        }
        indexed.meta_path(prefix).write_text(meta if isinstance(meta, str) else json.dumps({**base, **meta}))


def jsonl(d, row):
    p = d / "rows.jsonl"
    p.write_text("\n".join([json.dumps({"text": "fine row " * 20})] * 30 + [row]) + "\n")
    return p, "auto", f"{p}:31: "


def case(name, d: Path):
    """(source path, format, what the message must contain) of one bad input built in ``d``."""
    f = d / "f"
    if name == "text: not utf-8":
        f.write_bytes(b"plain text " * 100 + b"caf\xe9\n")
        return f, "text", f"{f}: byte 1103 is not valid UTF-8"
    if name == "text: missing":
        return f, "text", f"data source {f} does not exist"
    if name == "text: empty folder":
        f.mkdir()
        return f, "auto", f"data source {f} is an empty folder"
    if name == "text: too small":
        f.write_text("tiny")
        return f, "text", "too few for a training and a validation sequence"
    if name == "text: split leaves no validation window":
        f.write_text("x" * (2 * SEQ + 3))  # validation gets exactly seq_len + 1 tokens: nothing to draw
        return f, "text", "the validation split of"
    if name.startswith("jsonl: domain "):
        value = name.split("domain ", 1)[1]
        p, fmt, where = jsonl(d, '{"text": "t", "domain": %s}' % value)
        msg = f"'domain' must be a non-negative integer, got {value}" if value != "5" else "domain 5 must be in [0, 1)"
        return p, fmt, (where + msg) if value != "5" else f"{p}: {msg}"
    if name == "jsonl: not json":
        p, fmt, where = jsonl(d, '{"text": ')
        return p, fmt, where + "not valid JSON"
    if name == "jsonl: no text":
        p, fmt, where = jsonl(d, '{"body": "t"}')
        return p, fmt, where + "each JSONL row needs a string 'text' field"
    if name == "jsonl: not utf-8":
        p = d / "rows.jsonl"
        p.write_bytes(b'{"text": "caf\xe9"}\n')
        return p, "auto", f"{p}: byte 13 is not valid UTF-8"
    for fmt, dtype in (("bin_uint16", np.uint16), ("bin_uint32", np.uint32)):
        if name == f"{fmt}: empty":
            f.write_bytes(b"")
            return f, fmt, f"{f}: the {fmt} file is empty"
        if name == f"{fmt}: ragged size":
            f.write_bytes(tokens(100, dtype).tobytes() + b"\x01")
            return f, fmt, f"{f}: {100 * np.dtype(dtype).itemsize + 1} bytes is not a multiple of"
        if name == f"{fmt}: id beyond the vocabulary in the validation split only":
            tokens(2000, dtype, bad_at=1990).tofile(f)
            return f, fmt, f"{f}: token id 300 is outside the tokenizer's vocabulary [0, 256)"
    p = d / "ds"
    if name == "indexed: missing .idx":
        tokens().tofile(indexed.bin_path(p))
        return p, "indexed", f"{p}.idx is missing (found ds.bin only)"
    if name == "indexed: missing .bin":
        write_indexed(p, tokens())
        indexed.bin_path(p).unlink()
        return Path(f"{p}.idx"), "auto", f"{p}.bin is missing (found ds.idx only)"
    if name == "indexed: not an index":
        write_indexed(p, tokens())
        indexed.idx_path(p).write_bytes(b"PK\x03\x04" + bytes(60))
        return p, "indexed", f"{p}.idx: not an indexed-dataset index"
    if name == "indexed: truncated index":
        write_indexed(p, tokens())
        indexed.idx_path(p).write_bytes(indexed.idx_path(p).read_bytes()[:-3])
        return p, "auto", f"{p}.idx: 59 bytes does not match its header"
    if name == "indexed: halves that do not belong together":
        write_indexed(p, tokens())
        tokens(1500).tofile(indexed.bin_path(p))
        return p, "auto", f"{p}.bin: 3000 bytes, but {p}.idx indexes 2000 uint16 tokens"
    if name == "indexed: float tokens":
        write_indexed(p, tokens())
        raw = bytearray(indexed.idx_path(p).read_bytes())
        raw[17] = 7
        indexed.idx_path(p).write_bytes(bytes(raw))
        return p, "auto", f"{p}.idx: dtype code 7 is not an integer token type"
    if name == "indexed: id beyond the vocabulary in the validation split only":
        write_indexed(p, tokens(bad_at=1990))
        return p, "auto", f"{p}.bin: token id 300 is outside the tokenizer's vocabulary"
    if name == "indexed: prepared with another tokenizer":
        write_indexed(p, tokens(), meta={"tokenizer": "sha256:abc", "tokenizer_name": "bpe.json", "vocab_size": 5000})
        return p, "auto", f"{p}.locmoe.json: prepared with tokenizer 'bpe.json'"
    if name == "indexed: sidecar not json":
        write_indexed(p, tokens(), meta="{oops")
        return p, "auto", f"{p}.locmoe.json: not valid JSON"
    if name == "indexed: sidecar of the wrong shape":
        write_indexed(p, tokens(), meta={"tokens": "2000"})
        return p, "auto", f"{p}.locmoe.json: not a locmoe-indexed v1 sidecar"
    if name == "indexed: document domain beyond num_domains":
        write_indexed(p, tokens(), meta={}, modes=np.array([3]))
        return p, "auto", f"{p}.idx: document domain 3 must be in [0, 1)"
    if name == "indexed: no tokens":
        write_indexed(p, tokens(0))
        return p, "indexed", f"indexed dataset {p} holds no tokens"
    return hf_case(name, d)


def hf_case(name, d: Path):
    """The Hugging Face formats (the hf-data extra): parquet, arrow, a save_to_disk folder."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["fine row " * 20] * 30}
    if name == "parquet: no text column":
        pq.write_table(pa.table({"body": rows["text"]}), d / "x.parquet")
        return d / "x.parquet", "auto", f"{d / 'x.parquet'}: needs a string 'text' column"
    if name == "parquet: domain 5":
        pq.write_table(pa.table({**rows, "domain": [0] * 29 + [5]}), d / "x.parquet")
        return d / "x.parquet", "auto", f"{d / 'x.parquet'}: domain 5 must be in [0, 1)"
    if name == "parquet: not parquet":
        (d / "x.parquet").write_text("fine row " * 20)
        return d / "x.parquet", "auto", f"{d / 'x.parquet'}: not a readable parquet source"
    if name == "arrow: null text":
        with pa.ipc.new_file(d / "x.arrow", pa.schema([("text", pa.string())])) as w:
            w.write_table(pa.table({"text": rows["text"] + [None]}))
        return d / "x.arrow", "auto", f"{d / 'x.arrow'}: row 30 has no text (null)"
    if name == "arrow: not arrow":
        (d / "x.arrow").write_bytes(b"ARROW1" + bytes(40))
        return d / "x.arrow", "arrow", f"{d / 'x.arrow'}: not a readable arrow source"
    if name == "datasets: a DatasetDict":
        datasets.disable_progress_bars()  # its bar on stderr is not the command's output
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(d / "dd"))
        return d / "dd", "auto", f"{d / 'dd'} holds a DatasetDict (splits ['train']): give one split's folder"
    if name == "datasets: no save_to_disk folder":
        (d / "plain").mkdir()
        (d / "plain" / "a.txt").write_text("fine row " * 20)
        return d / "plain", "datasets", f"data source {d / 'plain'} holds no folder written by save_to_disk"
    raise AssertionError(name)


CASES = [
    "text: not utf-8",
    "text: missing",
    "text: empty folder",
    "text: too small",
    "text: split leaves no validation window",
    'jsonl: domain "a"',
    "jsonl: domain 0.7",
    "jsonl: domain true",
    "jsonl: domain -1",
    "jsonl: domain 5",
    "jsonl: not json",
    "jsonl: no text",
    "jsonl: not utf-8",
    *(
        f"{fmt}: {what}"
        for fmt in ("bin_uint16", "bin_uint32")
        for what in ("empty", "ragged size", "id beyond the vocabulary in the validation split only")
    ),
    "indexed: missing .idx",
    "indexed: missing .bin",
    "indexed: not an index",
    "indexed: truncated index",
    "indexed: halves that do not belong together",
    "indexed: float tokens",
    "indexed: id beyond the vocabulary in the validation split only",
    "indexed: prepared with another tokenizer",
    "indexed: sidecar not json",
    "indexed: sidecar of the wrong shape",
    "indexed: document domain beyond num_domains",
    "indexed: no tokens",
    "parquet: no text column",
    "parquet: domain 5",
    "parquet: not parquet",
    "arrow: null text",
    "arrow: not arrow",
    "datasets: a DatasetDict",
    "datasets: no save_to_disk folder",
]


@pytest.mark.parametrize("name", CASES)
def test_bad_data_is_one_line_exit_2_nothing_written(tmp_path, capsys, name):
    data = tmp_path / "data"
    data.mkdir()
    path, fmt, expected = case(name, data)
    out = tmp_path / "run"
    sets = [*QUIET, f"train.out_dir={out}", f"data.sources=[{{path: '{path}', format: {fmt}}}]"]
    rc = cli.main(["train", str(ROOT / "configs" / "tiny_cpu.yaml"), *(a for s in sets for a in ("--set", s))])
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("locmoe train: DataError: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


def test_every_source_format_is_fuzzed():
    from locmoe.config.schema import DATA_FORMATS

    assert {c.split(":")[0] for c in CASES} == set(DATA_FORMATS) - {"auto"}
