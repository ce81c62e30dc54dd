"""Reading a Hugging Face model directory without running anything it holds: ``config.json`` as JSON, the
weights only from safetensors files (a length-prefixed JSON header and raw little-endian buffers, parsed
here with numpy: bf16 is widened to fp32 exactly), never a pickle (``pytorch_model.bin``, ``*.pt``).
Every defect is an :class:`HFFormatError` naming the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from locmoe.export.hf_config import HFFormatError

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_HEADER = 100 << 20


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise HFFormatError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HFFormatError(f"{path} is not valid JSON ({err}); the directory is corrupt") from None


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (one, or the shards its index names)."""
    if (directory / INDEX).is_file():
        index = read_json(directory / INDEX)
        names = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        if not names:
            raise HFFormatError(f"{directory / INDEX} has no weight_map of tensor -> file")
        bad = [
            n
            for n in names
            if not isinstance(n, str) or "/" in n or "\\" in n or n in ("", ".", "..") or not n.endswith(".safetensors")
        ]
        if bad:
            raise HFFormatError(
                f"{directory / INDEX} names files {bad[:3]}; only plain *.safetensors names inside "
                "the directory are read"
            )
        return [directory / n for n in names]
    if (directory / SINGLE).is_file():
        return [directory / SINGLE]
    pickles = sorted(p.name for pattern in PICKLES for p in directory.glob(pattern))
    if pickles:
        raise HFFormatError(
            f"{directory} holds its weights only as pickles ({', '.join(pickles[:3])}); loading a "
            "pickle can run code, so they are never read. Re-save the model with safetensors "
            "where you trust it (transformers: model.save_pretrained(dir), the default)"
        )
    raise HFFormatError(f"{directory} has no weights: neither {SINGLE} nor {INDEX}")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file (bf16 as fp32)."""
    if not path.is_file():
        raise HFFormatError(f"{path} is missing")
    data = path.read_bytes()
    if len(data) < 8:
        raise HFFormatError(f"{path} is truncated ({len(data)} bytes); not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER, len(data) - 8):
        raise HFFormatError(f"{path}: header length {n} does not fit the file of {len(data)} bytes; corrupt")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HFFormatError(f"{path}: the header is not JSON ({err}); not a safetensors file") from None
    if not isinstance(header, dict):
        raise HFFormatError(f"{path}: the header is not a JSON object; not a safetensors file")
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = _tensor(path, name, info, body)
    return out


def _tensor(path: Path, name: str, info: Any, body: memoryview) -> np.ndarray:
    try:
        dtype, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise HFFormatError(f"{path}: the header entry of {name!r} is malformed") from None
    if dtype not in DTYPES and dtype != "BF16":
        raise HFFormatError(f"{path}: tensor {name!r} has dtype {dtype}; readable: {sorted([*DTYPES, 'BF16'])}")
    width = 2 if dtype == "BF16" else np.dtype(DTYPES[dtype]).itemsize
    count = int(np.prod(shape)) if shape else 1
    if (
        not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= len(body))
        or end - begin != count * width
    ):
        raise HFFormatError(
            f"{path}: tensor {name!r} ({dtype} {shape}) has byte range [{begin}, {end}) that does "
            f"not fit its size or the file; the file is truncated or corrupt"
        )
    raw = body[begin:end]
    if dtype == "BF16":  # the upper half of an fp32: widening is exact
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<")).reshape(shape).copy()


def read_weights(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of the directory's safetensors files; a name in two files is an error."""
    out: dict[str, np.ndarray] = {}
    for f in weight_files(directory):
        for name, t in read_safetensors(f).items():
            if name in out:
                raise HFFormatError(f"{f}: tensor {name!r} is also in another weight file")
            out[name] = t
    return out
