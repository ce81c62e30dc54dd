"""The tokenizer files of a Hugging Face export, written as plain JSON (no tokenizers package needed).

Byte-level (``data.tokenizer: byte``): a ``tokenizers`` BPE model whose 256-token vocabulary is the bytes
themselves, id = byte value, with no merges; the ByteLevel pre-tokenizer and decoder only map each byte to
a printable character and back (no regex split, no prefix space), so ``encode`` gives exactly the UTF-8
bytes and ``decode`` is ``bytes(ids).decode("utf-8", errors="replace")`` — invalid sequences included,
which a ``<0xNN>`` byte-fallback vocabulary does not match. A tokenizers JSON file (``data.tokenizer``:
the run's ``tokenizer.json``) is copied as it is. ``tokenizer_config.json`` names
``PreTrainedTokenizerFast``, so ``AutoTokenizer`` loads either one as a fast tokenizer.
"""

from __future__ import annotations

import json

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the ByteLevel pre-tokenizer's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer_json() -> str:
    """``tokenizer.json`` of the byte-level tokenizer (ids == UTF-8 bytes)."""
    chars = _bytes_to_unicode()
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": {chars[b]: b for b in range(256)},
        "merges": [],
    }
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": BYTE_LEVEL,
        "post_processor": None,
        "decoder": BYTE_LEVEL,
        "model": model,
    }
    return json.dumps(tok, ensure_ascii=False, indent=1) + "\n"


def tokenizer_config_json(max_len: int, eos_token: str | None = None) -> str:
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
    }
    if eos_token is not None:
        cfg["eos_token"] = eos_token
    return json.dumps(cfg, indent=2) + "\n"


def eos_of(tokenizer_json: str) -> tuple[int | None, str | None]:
    """(id, text) of an end-of-sequence special token of a tokenizers JSON file, if it has one by a usual
    name; the byte-level tokenizer has none."""
    try:
        added = json.loads(tokenizer_json).get("added_tokens") or []
    except (json.JSONDecodeError, AttributeError):
        return None, None
    for t in added:
        if (
            isinstance(t, dict)
            and t.get("special")
            and t.get("content") in ("</s>", "<|endoftext|>", "<eos>", "<|eos|>", "[SEP]")
        ):
            return int(t["id"]), t["content"]
    return None, None


def generation_config_json(eos_token_id: int | None) -> str:
    """Greedy by default, as ``locmoe generate``; the pad id only fills finished rows of a batch."""
    return (
        json.dumps(
            {
                "do_sample": False,
                "eos_token_id": eos_token_id,
                "pad_token_id": eos_token_id if eos_token_id is not None else 0,
            },
            indent=2,
        )
        + "\n"
    )
