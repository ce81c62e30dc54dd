"""The indexed dataset format: the .idx bytes follow Megatron's MMapIndexedDataset layout (checked against a
hand-assembled file), what is written is read back exactly, foreign (sidecar-less) files are read, and any
corruption of the index is a DataError, never another exception."""

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locmoe.config.schema import DataConfig, DataSource
from locmoe.data import DataError, indexed, load_corpus, load_tokenizer


def handmade_idx(dtype_code, lengths, itemsize, doc_index, modes=None) -> bytes:
    """The layout written out field by field from Megatron's _IndexWriter (independent of write_index)."""
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype_code)
    out += struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(doc_index))
    out += b"".join(struct.pack("<i", n) for n in lengths)
    ptr = 0
    for n in lengths:
        out += struct.pack("<q", ptr)
        ptr += n * itemsize
    out += b"".join(struct.pack("<q", i) for i in doc_index)
    if modes is not None:
        out += b"".join(struct.pack("<b", m) for m in modes)
    return out


@pytest.mark.parametrize("dtype,code", [(np.uint8, 1), (np.uint16, 8), (np.int32, 4)])
def test_idx_bytes_follow_megatrons_layout(tmp_path, dtype, code):
    lengths = [3, 0, 7, 1]
    indexed.write_index(tmp_path / "a.idx", dtype, lengths, None)
    assert (tmp_path / "a.idx").read_bytes() == handmade_idx(code, lengths, np.dtype(dtype).itemsize, [0, 1, 2, 3, 4])
    indexed.write_index(tmp_path / "b.idx", dtype, lengths, np.array([2, 0, 1, 2]))
    assert (tmp_path / "b.idx").read_bytes() == handmade_idx(
        code, lengths, np.dtype(dtype).itemsize, [0, 1, 2, 3, 4], [2, 0, 1, 2]
    )


def test_a_long_document_becomes_several_sequences(tmp_path, monkeypatch):
    monkeypatch.setattr(indexed, "MAX_SEQUENCE", 4)
    indexed.write_index(tmp_path / "a.idx", np.uint16, [10, 3], np.array([1, 0]))
    # document 0 = sequences 0..2 (4 + 4 + 2 tokens), document 1 = sequence 3
    assert (tmp_path / "a.idx").read_bytes() == handmade_idx(8, [4, 4, 2, 3], 2, [0, 3, 4], [1, 1, 1, 0])


def write_dataset(prefix, docs, domains, dtype, meta=True, vocab=256):
    np.concatenate(docs).astype(dtype).tofile(indexed.bin_path(prefix))
    indexed.write_index(indexed.idx_path(prefix), dtype, [len(d) for d in docs], np.asarray(domains) if meta else None)
    if meta:
        indexed.meta_path(prefix).write_text(
            json.dumps(
                {
                    "format": "locmoe-indexed",
                    "version": 1,
                    "dtype": np.dtype(dtype).name,
                    "documents": len(docs),
                    "tokens": int(sum(len(d) for d in docs)),
                    "max_token": int(max(d.max() for d in docs if len(d))),
                    "tokenizer": "byte",
                    "tokenizer_name": "byte",
                    "vocab_size": vocab,
                    "document_domains": True,
                }
            )
        )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_written_is_read_back_exactly(tmp_path, dtype):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 256, rng.integers(0, 300)) for _ in range(40)]
    domains = rng.integers(0, 3, 40)
    write_dataset(tmp_path / "c", docs, domains, dtype)
    ds = indexed.open_indexed(tmp_path / "c")
    arrays = ds.arrays()
    assert ds.documents == 40 and ds.dtype == np.dtype(dtype) and ds.n_tokens == sum(map(len, docs))
    np.testing.assert_array_equal(arrays["lengths"], [len(d) for d in docs])
    np.testing.assert_array_equal(arrays["modes"], domains)
    np.testing.assert_array_equal(ds.tokens()[0 : ds.n_tokens], np.concatenate(docs))
    # the corpus: each domain is its documents in order (interleaved domains are runs of one file)
    corpus = load_corpus(
        DataConfig(sources=[DataSource(path=str(tmp_path / "c"))], seq_len=8, val_fraction=0.1),
        load_tokenizer("byte"),
        3,
    )
    for d in range(3):
        whole = np.concatenate([doc for doc, dom in zip(docs, domains) if dom == d])
        got = np.concatenate([corpus.train[d][0 : len(corpus.train[d])], corpus.val[d][0 : len(corpus.val[d])]])
        np.testing.assert_array_equal(got, whole)


def test_a_megatron_file_without_sidecar_is_one_domain(tmp_path):
    """Files from Megatron's tools have no sidecar: their modes (if any) are not domains; the source's domain
    applies and the tokens are scanned for the vocabulary check."""
    docs = [np.arange(50) % 200, np.arange(70) % 100]
    write_dataset(tmp_path / "m", docs, [1, 0], np.uint16, meta=False)
    corpus = load_corpus(
        DataConfig(sources=[DataSource(path=str(tmp_path / "m.idx"), domain=1)], seq_len=8, val_fraction=0.2),
        load_tokenizer("byte"),
        2,
    )
    assert list(corpus.train) == [1] and corpus.tokens("train") + corpus.tokens("val") == 120


@pytest.mark.parametrize("spelling", ["c", "c.bin", "c.idx"])
def test_auto_detects_the_prefix(tmp_path, spelling):
    write_dataset(tmp_path / "c", [np.arange(100) % 256], [0], np.uint8)
    corpus = load_corpus(
        DataConfig(sources=[DataSource(path=str(tmp_path / spelling))], seq_len=8, val_fraction=0.2),
        load_tokenizer("byte"),
        1,
    )
    assert corpus.tokens("train") + corpus.tokens("val") == 100


def test_a_folder_lists_each_pair_once(tmp_path):
    write_dataset(tmp_path / "c", [np.arange(100) % 256], [0], np.uint8)
    (tmp_path / "notes.txt").write_text("some text " * 20)
    corpus = load_corpus(DataConfig(sources=[DataSource(path=str(tmp_path))], seq_len=8), load_tokenizer("byte"), 1)
    assert corpus.tokens("train") + corpus.tokens("val") == 100 + len("some text " * 20) + 1


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(2)
    write_dataset(d / "g", [rng.integers(0, 256, n) for n in (5, 0, 17, 9)], [0, 1, 1, 0], np.uint16)
    return d


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_corrupt_index_is_a_data_error(good, tmp_path_factory, data):
    """Byte flips, truncation and extension of the .idx: open_indexed either reads a consistent dataset or
    raises DataError (naming the file); nothing else escapes."""
    raw = bytearray(indexed.idx_path(good / "g").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if kind == "flip" and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[data.draw(st.integers(0, len(raw))) :]
        else:
            raw += bytes(data.draw(st.integers(1, 16)))
    d = tmp_path_factory.mktemp("bad")
    (d / "g.bin").write_bytes((good / "g.bin").read_bytes())
    (d / "g.idx").write_bytes(bytes(raw))
    try:
        ds = indexed.open_indexed(d / "g")
    except DataError as err:
        assert "\n" not in str(err) and str(d / "g") in str(err)
        return
    assert ds.n_tokens * ds.dtype.itemsize == (d / "g.bin").stat().st_size
    assert len(ds.tokens()[0 : ds.n_tokens]) == ds.n_tokens
