"""The tokenizer files of a Hugging Face export, written as plain JSON (no tokenizers package needed).

Byte-level (``data.tokenizer: byte``): a ``tokenizers`` BPE model whose 256-token vocabulary is the bytes
themselves, id = byte value, with no merges; the ByteLevel pre-tokenizer and decoder only map each byte to
a printable character and back (no regex split, no prefix space), so ``encode`` gives exactly the UTF-8
bytes and ``decode`` is ``bytes(ids).decode("utf-8", errors="replace")`` — invalid sequences included,
which a ``<0xNN>`` byte-fallback vocabulary does not match (id 255 aside: it decodes as its token, below).
A tokenizers JSON file (``data.tokenizer``: the run's ``tokenizer.json``) is copied as it is.
``tokenizer_config.json`` names ``PreTrainedTokenizerFast``, so ``AutoTokenizer`` loads either one as a fast
tokenizer.

End of text and padding, so that ``AutoTokenizer.from_pretrained(export)(prompts, padding=True)`` works: the
byte-level vocabulary has no free id (the model's 256 ids are the 256 bytes), so ``<|endoftext|>`` takes id
255, the byte 0xFF, which UTF-8 text never contains: no text the model was trained on used it, and every
text still encodes to exactly its bytes. Padding reuses it, as GPT-2's byte-level tokenizer pads with its
end-of-text token (left padding: the attention mask hides it). ``split_special_tokens`` keeps a literal
"<|endoftext|>" in a prompt as its 13 bytes, as training saw it. A tokenizers JSON file keeps its own
tokens: its end-of-sequence token by a usual name, its pad token by a usual name, else the end token.
"""

from __future__ import annotations

import json

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
BYTE_EOS, BYTE_EOS_ID = "<|endoftext|>", 0xFF  # never a byte of UTF-8 text (nor are 0xC0, 0xC1, 0xF5-0xFE)
EOS_NAMES = ("</s>", "<|endoftext|>", "<eos>", "<|eos|>", "[SEP]")
PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")


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


def byte_tokenizer_json(end_of_text: bool = True) -> str:
    """``tokenizer.json`` of the byte-level tokenizer (ids == UTF-8 bytes), with ``<|endoftext|>`` as id 255
    (``end_of_text=False``: as exports before it were written)."""
    chars = _bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    added = []
    if end_of_text:  # 0xFF's character is unreachable (no UTF-8 text has the byte): the id gets the token's name
        del vocab[chars[BYTE_EOS_ID]]
        vocab[BYTE_EOS] = BYTE_EOS_ID
        added = [
            {
                "id": BYTE_EOS_ID,
                "content": BYTE_EOS,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ]
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": [],
    }
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": BYTE_LEVEL,
        "post_processor": None,
        "decoder": BYTE_LEVEL,
        "model": model,
    }
    return json.dumps(tok, ensure_ascii=False, indent=1) + "\n"


def is_byte_tokenizer(data) -> bool:
    """Whether parsed ``tokenizer.json`` data is the byte-level tokenizer, as exported now or before."""
    return any(data == json.loads(byte_tokenizer_json(eot)) for eot in (True, False))


def tokenizer_config_json(max_len: int, specials: dict, byte_level: bool) -> str:
    """``specials``: {"eos_token": ..., "pad_token": ...} of :func:`special_tokens`, without their ids.
    Text encodes as in training: for the byte-level tokenizer a typed "<|endoftext|>" is its bytes
    (``split_special_tokens``); a tokenizers JSON file matches its special tokens in text, as it did when
    training encoded with it."""
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        "split_special_tokens": byte_level,
    }
    cfg.update({k: v for k, v in specials.items() if k in ("eos_token", "pad_token") and v is not None})
    return json.dumps(cfg, indent=2) + "\n"


def special_tokens(tokenizer_json: str) -> dict:
    """{eos_token, eos_token_id, pad_token, pad_token_id} of a tokenizers JSON file: special tokens by a
    usual name (the pad falls back to the end token); None where it has none."""
    try:
        added = json.loads(tokenizer_json).get("added_tokens") or []
    except (json.JSONDecodeError, AttributeError):
        added = []
    special = {t["content"]: int(t["id"]) for t in added if isinstance(t, dict) and t.get("special")}
    eos = next((name for name in EOS_NAMES if name in special), None)
    pad = next((name for name in PAD_NAMES if name in special), eos)
    return {"eos_token": eos, "eos_token_id": special.get(eos), "pad_token": pad, "pad_token_id": special.get(pad)}


def generation_config_json(specials: dict) -> str:
    """Greedy by default, as ``locmoe generate``; the pad id only fills finished rows of a batch."""
    eos, pad = specials["eos_token_id"], specials["pad_token_id"]
    return (
        json.dumps(
            {"do_sample": False, "eos_token_id": eos, "pad_token_id": pad if pad is not None else 0},
            indent=2,
        )
        + "\n"
    )
