"""Tokenizers: byte-level by default (vocab 256, nothing to download), a ``tokenizers`` JSON file, or a Hugging
Face tokenizer folder (``AutoTokenizer.save_pretrained``'s, read through the ``tokenizer.json`` inside it:
the fast tokenizer that ``AutoTokenizer`` itself loads from there)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes are the tokens."""

    vocab_size = 256
    fingerprint = "byte"  # what a prepared dataset records to refuse another tokenizer
    name = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class FileTokenizer:
    """A Hugging Face ``tokenizers`` JSON file (``pip install tokenizers``)."""

    def __init__(self, path: str | Path, name: str | None = None):
        from locmoe.data.errors import DataError

        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError(
                f"data.tokenizer = {str(path)!r} needs the tokenizers package: pip install 'locmoe[tokenizers]'"
            ) from None
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as err:  # the library raises a bare Exception for a malformed file
            raise DataError(f"data.tokenizer = {str(path)!r} is not a tokenizers JSON file ({err})") from None
        self.vocab_size = self.tok.get_vocab_size()
        self.name = name or str(path)
        self.fingerprint = "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


TOKENIZER_JSON = "tokenizer.json"  # the file of a Hugging Face tokenizer folder that holds the whole tokenizer


def tokenizer_file(spec: str) -> Path | None:
    """The tokenizers JSON file that ``data.tokenizer = spec`` names (the file, or a folder's tokenizer.json);
    None for ``byte``. A ConfigError naming the field when it names neither."""
    if spec == "byte":
        return None
    path = Path(spec)
    if path.is_file():
        return path
    from locmoe.config import ConfigError

    if path.is_dir():
        if (path / TOKENIZER_JSON).is_file():
            return path / TOKENIZER_JSON
        raise ConfigError(
            "data.tokenizer",
            f"folder {spec!r} holds no {TOKENIZER_JSON}; save a fast tokenizer there "
            "(AutoTokenizer.from_pretrained(NAME).save_pretrained(FOLDER)) or name a tokenizers JSON file",
        )
    raise ConfigError(
        "data.tokenizer",
        f"{spec!r} is neither 'byte', an existing tokenizers JSON file nor a Hugging Face tokenizer folder",
    )


def load_tokenizer(spec: str):
    """``byte``, the path of a tokenizers JSON file, or a Hugging Face tokenizer folder."""
    file = tokenizer_file(spec)
    return ByteTokenizer() if file is None else FileTokenizer(file, name=spec)
