"""``locmoe data prepare``: the prepared dataset holds exactly the tokens training on the text sources would,
whatever the number of workers or JSONL chunks; failures name the file and leave nothing behind; training
reads the prefix."""

import json

import numpy as np
import pytest

from locmoe import cli
from locmoe.config.schema import DataConfig, DataSource
from locmoe.data import BatchSampler, indexed, load_corpus, load_tokenizer
from locmoe.data import prepare as prepare_mod


@pytest.fixture()
def texts(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    rows = [
        json.dumps({"text": f"row {i} ünï " * (i % 9 + 1), **({"domain": i % 2} if i % 4 else {})}) for i in range(500)
    ]
    (d / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (d / "prose.txt").write_text("Some prose, plain text. " * 300, encoding="utf-8")
    (d / "blank.txt").write_text("  \n")
    return d


def run(*argv):
    return cli.main(["data", "prepare", *map(str, argv), "--no-progress"])


def test_prepared_equals_training_on_the_text(texts, tmp_path, capsys):
    assert run(texts, "--out", tmp_path / "p", "--workers", "1") == 0
    out = capsys.readouterr().out
    meta = json.loads(indexed.meta_path(tmp_path / "p").read_text())
    assert f"{meta['documents']} documents, {meta['tokens']} tokens, dtype uint8" in out
    assert meta["documents"] == 501 and meta["dtype"] == "uint8"  # 500 rows + prose; blank.txt skipped
    cfg = lambda path: DataConfig(sources=[DataSource(path=str(path))], seq_len=32, seed=7)  # noqa: E731
    tok = load_tokenizer("byte")
    a, b = load_corpus(cfg(texts), tok, 2), load_corpus(cfg(tmp_path / "p"), tok, 2)
    for split in ("train", "val"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert sa.keys() == sb.keys() == {0, 1}
        for d in sa:
            np.testing.assert_array_equal(sa[d][0 : len(sa[d])], sb[d][0 : len(sb[d])])
    for step in range(3):
        for x, y in zip(
            BatchSampler(a, 32, 4, rank=0, world=1, seed=7).batch(step),
            BatchSampler(b, 32, 4, rank=0, world=1, seed=7).batch(step),
        ):
            np.testing.assert_array_equal(x, y)


def test_workers_and_chunks_do_not_change_the_bytes(texts, tmp_path, monkeypatch):
    assert run(texts, "--out", tmp_path / "one", "--workers", "1") == 0
    monkeypatch.setattr(prepare_mod, "CHUNK_BYTES", 1000)  # rows.jsonl becomes ~20 units
    assert len(prepare_mod.plan_units([str(texts / "rows.jsonl")], "auto", 0)) > 10
    assert prepare_mod.prepare([str(texts)], str(tmp_path / "two"), workers=2, progress=False)["documents"] == 501
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()


def test_a_bad_row_names_its_line_and_leaves_nothing(texts, tmp_path, monkeypatch, capsys):
    lines = (texts / "rows.jsonl").read_text().splitlines()
    lines[411] = '{"text": "x", "domain": 0.7}'
    (texts / "rows.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(prepare_mod, "CHUNK_BYTES", 1000)  # the bad row is deep in a later chunk
    out = tmp_path / "out"
    out.mkdir()
    assert run(texts, "--out", out / "p", "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"locmoe data: DataError: {texts / 'rows.jsonl'}:412: 'domain' must be a non-negative integer, got 0.7"
    )
    assert list(out.iterdir()) == []  # no PREFIX.*, no temporary folder


@pytest.mark.parametrize("case", ["not utf-8", "existing output", "binary source", "no text", "missing folder"])
def test_refusals(texts, tmp_path, capsys, case):
    out = tmp_path / "out"
    out.mkdir()
    prefix, args = out / "p", [texts]
    if case == "not utf-8":
        (texts / "prose.txt").write_bytes(b"caf\xe9 au lait\n" * 3)
        want = f"{texts / 'prose.txt'}: byte 3 is not valid UTF-8"
    elif case == "existing output":
        indexed.bin_path(prefix).write_bytes(b"keep me")
        want = "already exist(s); pass --overwrite"
    elif case == "binary source":
        (texts / "tokens.u16").write_bytes(b"\x01\x00")
        want = "reads text and jsonl sources, not bin_uint16"
    elif case == "no text":
        args = [texts / "blank.txt"]
        want = "the sources hold no text"
    else:
        prefix = out / "nope" / "p"
        want = "folder"
    before = sorted(p.name for p in out.iterdir())
    assert run(*args, "--out", prefix, "--workers", "1") == 2
    err = capsys.readouterr().err
    assert want in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == before
    if case == "existing output":
        assert indexed.bin_path(prefix).read_bytes() == b"keep me"


def test_training_reads_the_prefix(texts, tmp_path):
    """One short real run on a prepared prefix (torch, one process)."""
    from tests.training.runs import losses, train

    assert run(texts, "--out", tmp_path / "p") == 0
    out = tmp_path / "run"
    train(
        out,
        f"data.sources=[{{path: {tmp_path / 'p'}}}]",
        "moe.domains.num_domains=2",
        "data.seq_len=32",
        "model.max_seq_len=32",
        "train.steps=2",
        "train.warmup_steps=1",
        "train.batch_size=2",
    )
    assert 2 in losses(out)


def test_a_tokenizer_file_and_its_fingerprint(tmp_path):
    """Prepared with a BPE file: uint16 tokens equal to encoding the text with it (workers load the same file);
    training with the byte tokenizer is refused, naming the sidecar."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from locmoe.data import DataError

    text = "To be, or not to be, that is the question. " * 200
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        [text], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    tok.save(str(tmp_path / "bpe.json"))
    (tmp_path / "a.txt").write_text(text)
    meta = prepare_mod.prepare(
        [str(tmp_path / "a.txt")], str(tmp_path / "p"), str(tmp_path / "bpe.json"), progress=False
    )
    bpe = load_tokenizer(str(tmp_path / "bpe.json"))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == bpe.vocab_size > 256
    np.testing.assert_array_equal(np.fromfile(tmp_path / "p.bin", dtype=np.uint16), bpe.encode(text + "\n"))
    cfg = DataConfig(sources=[DataSource(path=str(tmp_path / "p"))], seq_len=16)
    assert load_corpus(cfg, bpe, 1).tokens("train") > 0
    with pytest.raises(
        DataError, match=r"p\.locmoe\.json: prepared with tokenizer .*bpe\.json.* but data\.tokenizer is byte"
    ):
        load_corpus(cfg, load_tokenizer("byte"), 1)


def test_a_failed_write_leaves_nothing(texts, tmp_path, monkeypatch, capsys):
    """A full disk while writing the index (a fault injected at the write): one line saying so, no PREFIX.*,
    no temporary folder."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr(indexed, "write_index", full)
    (tmp_path / "out").mkdir()
    assert run(texts, "--out", tmp_path / "out" / "p", "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("No space left on device (disk full); nothing was written") and "\n" not in err
    assert list((tmp_path / "out").iterdir()) == []
