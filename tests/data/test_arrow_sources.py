"""Hugging Face data formats (locmoe.data.arrow_source): a parquet file, an Arrow IPC file and a save_to_disk
folder holding the rows of a JSONL file train on exactly the JSONL's batches (the sampled token arrays, not
just a run), `locmoe data prepare` makes the same indexed dataset from each, and bad columns or rows end
with one line naming the file. Small row groups / blocks make the block-at-a-time path cut the data."""

import json

import numpy as np
import pytest

from locmoe.config.schema import DataConfig, DataSource
from locmoe.data import BatchSampler, DataError, arrow_source, load_corpus, load_tokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

ROWS = [
    {"text": f"row {i}: héllo wörld " * (i % 5 + 1) + ("" if i % 11 else "\n\tindented"), "domain": i % 3}
    for i in range(240)
]


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory, monkeypatch_module):
    d = tmp_path_factory.mktemp("hf")
    (d / "rows.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", "utf-8")
    table = pa.table({"text": [r["text"] for r in ROWS], "domain": pa.array([r["domain"] for r in ROWS], pa.int8())})
    pq.write_table(table.append_column("extra", pa.array(range(len(ROWS)))), d / "rows.parquet", row_group_size=50)
    with pa.ipc.new_file(d / "rows.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=64)
    datasets.Dataset.from_list(ROWS).save_to_disk(str(d / "saved"))
    monkeypatch_module.setattr(arrow_source, "BLOCK_BYTES", 2000)  # many blocks of the Arrow tables
    return d


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def batches(path: str, fmt: str = "auto", steps: int = 4) -> list[np.ndarray]:
    cfg = DataConfig(sources=[DataSource(path=path, format=fmt)], seq_len=24, val_fraction=0.1)
    corpus = load_corpus(cfg, load_tokenizer("byte"), num_domains=3)
    sampler = BatchSampler(corpus, cfg.seq_len, 4, rank=0, world=1, seed=7)
    splits = ("train", "val")
    return [np.concatenate(sampler.batch(s, split=split)[::2], axis=None) for s in range(steps) for split in splits]


@pytest.mark.parametrize("name", ["rows.parquet", "rows.arrow", "saved"])
def test_the_same_rows_train_on_the_same_batches_as_jsonl(corpus_files, name):
    assert len(arrow_source.blocks(corpus_files / name, "datasets" if name == "saved" else name[5:])) > 3
    expected = batches(str(corpus_files / "rows.jsonl"))
    for got, want in zip(batches(str(corpus_files / name)), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_max_bytes_keeps_whole_rows_of_text(corpus_files):
    """data.max_bytes counts the rows' text here (a JSONL file's count includes its JSON syntax)."""
    cfg = DataConfig(sources=[DataSource(path=str(corpus_files / "rows.parquet"))], seq_len=8, max_bytes=3000)
    got = load_corpus(cfg, load_tokenizer("byte"), 3)
    sizes = np.cumsum([len(r["text"].encode()) for r in ROWS])
    rows = int((sizes <= 3000).sum())
    assert got.tokens() + got.tokens("val") == sizes[rows - 1] + rows  # byte tokens: the text and a newline a row


def test_prepare_makes_the_same_dataset_from_each_format(corpus_files, tmp_path):
    from locmoe.data.indexed import open_indexed
    from locmoe.data.prepare import prepare

    made = {}
    for name in ("rows.jsonl", "rows.parquet", "saved"):
        prepare([str(corpus_files / name)], str(tmp_path / name), progress=False)
        ds = open_indexed(tmp_path / name)
        made[name] = (ds.tokens()[0 : ds.n_tokens].tolist(), [a.tolist() for a in ds.runs])
    assert made["rows.parquet"] == made["rows.jsonl"] == made["saved"]


def bad_parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"content": ["a"]}, "needs a string 'text' column"),
        ({"text": ["a"], "domain": ["x"]}, "column 'domain' is string; it needs integers"),
        ({"text": ["a", None]}, "row 1 has no text (null)"),
        ({"text": ["a", "b"], "domain": [0, -1]}, "row 1: 'domain' must be a non-negative integer, got -1"),
        ({"text": ["a"], "domain": [5]}, "domain 5 must be in [0, 3)"),
    ],
)
def test_bad_columns_and_rows_name_the_file(tmp_path, columns, message):
    path = bad_parquet(tmp_path / "bad.parquet", **columns)
    with pytest.raises(DataError, match=None) as err:
        load_corpus(DataConfig(sources=[DataSource(path=path)], seq_len=2), load_tokenizer("byte"), 3)
    assert path in str(err.value) and message in str(err.value)


def test_a_dataset_dict_names_its_splits(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:5])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"holds a DatasetDict \(splits \['train'\]\): give one split's folder"):
        load_corpus(DataConfig(sources=[DataSource(path=str(tmp_path / "dd"))]), load_tokenizer("byte"), 3)


def test_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"needs pyarrow and datasets: pip install 'locmoe\[hf-data\]'"):
        load_corpus(DataConfig(sources=[DataSource(path=str(tmp_path / "x.parquet"))]), load_tokenizer("byte"), 3)


def test_a_folder_lists_each_saved_dataset_once(corpus_files):
    from locmoe.data.sources import resolve

    found = resolve(corpus_files, "auto")
    assert (corpus_files / "saved", "datasets") in found and (corpus_files / "rows.parquet", "parquet") in found
    assert not [p for p, _ in found if corpus_files / "saved" in p.parents]  # not its .arrow and .json files
