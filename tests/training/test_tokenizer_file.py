"""``data.tokenizer`` = a Hugging Face tokenizers JSON file: encode/decode, training with it, and clear errors."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from locmoe.data import DataError, load_tokenizer
from tests.training.runs import train

TEXT = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
) * 50


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    path = tmp_path_factory.mktemp("tok") / "bpe.json"
    tok.save(str(path))
    return path


def test_encode_decode_round_trip(bpe_file):
    tok = load_tokenizer(str(bpe_file))
    assert tok.vocab_size == 300
    line = "The slings and arrows of outrageous fortune"
    ids = tok.encode(line)
    assert len(ids) < len(line)  # merges happened: fewer tokens than bytes
    assert tok.decode(ids) == line


def test_malformed_file_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="is not a tokenizers JSON file"):
        load_tokenizer(str(bad))


def test_training_with_a_tokenizer_file(tmp_path, bpe_file):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 4)
    common = [
        f"data.tokenizer={bpe_file}",
        f"data.sources=[{{path: {corpus}}}]",
        "data.seq_len=32",
        "model.max_seq_len=32",
        "train.steps=2",
        "train.warmup_steps=1",
        "train.ckpt_every=0",
    ]
    small = train(tmp_path / "small", *common, "model.vocab_size=256", check=False)
    assert small.returncode == 2 and "is smaller than the tokenizer's vocabulary (300)" in small.stderr
    train(tmp_path / "run", *common, "model.vocab_size=320")
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_a_hugging_face_tokenizer_folder_is_its_tokenizer_json(bpe_file, tmp_path):
    """AutoTokenizer.save_pretrained's folder: the same ids and fingerprint as its tokenizer.json (so a
    dataset prepared with one trains with the other), and the checkpoint keeps that file."""
    from transformers import PreTrainedTokenizerFast

    from locmoe.checkpoint.directory import copy_tokenizer

    PreTrainedTokenizerFast(tokenizer_file=str(bpe_file)).save_pretrained(tmp_path / "hf_tok")
    folder, file = load_tokenizer(str(tmp_path / "hf_tok")), load_tokenizer(str(bpe_file))
    line = "Or to take arms against a sea of troubles"
    assert folder.encode(line).tolist() == file.encode(line).tolist() and folder.vocab_size == 300
    assert folder.fingerprint == load_tokenizer(str(tmp_path / "hf_tok" / "tokenizer.json")).fingerprint
    (tmp_path / "ckpt").mkdir()
    copy_tokenizer(str(tmp_path / "hf_tok"), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer.json").read_bytes() == (tmp_path / "hf_tok" / "tokenizer.json").read_bytes()


def test_a_folder_without_tokenizer_json_names_the_field(tmp_path):
    from locmoe.config import ConfigError

    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"data.tokenizer: folder .* holds no tokenizer.json; save a fast tokenizer"):
        load_tokenizer(str(tmp_path))
