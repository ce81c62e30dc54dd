"""Lazy token streams: windows equal those of the eager int64 path, batch for batch, for every old source
format (text, jsonl with domains, bin_uint16, bin_uint32, the stdlib fallback with max_bytes), and the pieces
(TokenStream slicing and splitting, FileTokens, the chunked min/max scan) equal plain numpy."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locmoe.config.schema import DataConfig, DataSource
from locmoe.data import BatchSampler, TokenStream, load_corpus, load_tokenizer
from locmoe.data import stream as stream_mod
from locmoe.data.stream import FileTokens, scan_minmax
from tests.data.reference import batch_eager, load_eager


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    (d / "a.txt").write_text("héllo wörld, ünïcödé " * 200, encoding="utf-8")
    (d / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": f"row {i} " * (i % 7 + 3), "domain": i % 2}) for i in range(300))
    )
    rng.integers(0, 256, 20000).astype(np.uint16).tofile(d / "c.bin")
    rng.integers(0, 256, 30000).astype(np.uint32).tofile(d / "e.u32")
    (d / "folder").mkdir()
    (d / "folder" / "x.txt").write_text("first file\n" * 100)
    (d / "folder" / "y.txt").write_text("second file\n" * 100)
    return d


def configs(d):
    src = lambda path, **kw: DataSource(path=str(d / path), **kw)  # noqa: E731
    return {
        "stdlib, max_bytes": DataConfig(max_bytes=3000, seq_len=64),
        "text": DataConfig(sources=[src("a.txt")], seq_len=32),
        "text cut mid-character": DataConfig(sources=[src("a.txt")], seq_len=32, max_bytes=1001),
        "folder": DataConfig(sources=[src("folder")], seq_len=16, seed=5),
        "mixed domains": DataConfig(
            sources=[src("b.jsonl"), src("c.bin", domain=1), src("e.u32", domain=1), src("a.txt")],
            seq_len=48,
            val_fraction=0.1,
            seed=3,
        ),
    }


@pytest.mark.parametrize("name", ["stdlib, max_bytes", "text", "text cut mid-character", "folder", "mixed domains"])
def test_batches_equal_the_eager_path(sources, name):
    cfg = configs(sources)[name]
    tok = load_tokenizer("byte")
    corpus = load_corpus(cfg, tok, 2)
    train, val = load_eager(cfg, tok)
    for split, ref in (("train", train), ("val", val)):
        assert {d: len(s) for d, s in getattr(corpus, split).items()} == {d: len(s) for d, s in ref.items()}
        for d, s in ref.items():
            np.testing.assert_array_equal(getattr(corpus, split)[d][0 : len(s)], s)
    for world in (1, 3):
        for rank in range(world):
            sampler = BatchSampler(corpus, cfg.seq_len, 2, rank=rank, world=world, seed=cfg.seed)
            for step in range(4):
                for split, ref in (("train", train), ("val", val)):
                    got = sampler.batch(step, step % 2, split)
                    want = batch_eager(ref, cfg.seq_len, 2, rank, world, cfg.seed, step, step % 2, split)
                    for g, w in zip(got, want):
                        assert g.dtype == np.int64
                        np.testing.assert_array_equal(g, w)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=6), st.data())
def test_stream_slices_and_splits_equal_numpy(lengths, data):
    rng = np.random.default_rng(len(lengths))
    arrays = [rng.integers(0, 1000, n).astype(np.uint16) for n in lengths]
    flat = np.concatenate(arrays).astype(np.int64)
    s = TokenStream.of(arrays)
    assert len(s) == len(flat)
    a = data.draw(st.integers(0, len(flat)))
    b = data.draw(st.integers(a, len(flat)))
    np.testing.assert_array_equal(s[a:b], flat[a:b])
    head, tail = s.split(a)
    assert len(head) == a and len(tail) == len(flat) - a
    np.testing.assert_array_equal(np.concatenate([head[0 : len(head)], tail[0 : len(tail)]]), flat)
    if len(tail):
        c = data.draw(st.integers(0, len(tail) - 1))
        np.testing.assert_array_equal(tail[c:], flat[a + c :])


def test_file_tokens_and_chunked_scan(tmp_path, monkeypatch):
    tokens = np.random.default_rng(1).integers(0, 60000, 10007).astype(np.uint16)
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    ft = FileTokens(path, np.uint16)
    assert len(ft) == len(tokens)
    for a, b in ((0, 1), (5, 5000), (10000, 10007), (0, 10007)):
        np.testing.assert_array_equal(ft[a:b], tokens[a:b])
    monkeypatch.setattr(stream_mod, "SCAN_BYTES", 1000)  # ~20 chunks: the chunk edges are exercised
    assert scan_minmax(path, np.uint16) == (int(tokens.min()), int(tokens.max()))
    assert scan_minmax(path, np.uint16, offset=2 * 9000, count=1007) == (
        int(tokens[9000:].min()),
        int(tokens[9000:].max()),
    )


def test_a_stream_never_copies_the_corpus(sources):
    """The bin source is read lazily: the corpus holds no array of the file's size (the old path held an
    int64 copy, 8 bytes per token)."""
    cfg = DataConfig(sources=[DataSource(path=str(sources / "c.bin"))], seq_len=32)
    corpus = load_corpus(cfg, load_tokenizer("byte"), 1)
    bases = corpus.train[0].bases + corpus.val[0].bases
    assert all(isinstance(b, FileTokens) for b in bases)
