"""Tokenizers: byte-level by default (vocab 256, nothing to download), or a ``tokenizers`` JSON file."""

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

    def __init__(self, path: str | Path):
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
        self.name = str(path)
        self.fingerprint = "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str):
    """``byte`` or the path of a tokenizers JSON file."""
    if spec == "byte":
        return ByteTokenizer()
    if not Path(spec).is_file():
        from locmoe.config import ConfigError

        raise ConfigError("data.tokenizer", f"{spec!r} is neither 'byte' nor an existing tokenizers JSON file")
    return FileTokenizer(spec)
