"""Reading back what the plots wrote: PNG headers and the images in tensorboard event files."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; AssertionError if the bytes are not a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG signature"
    assert data[12:16] == b"IHDR", "no IHDR chunk first"
    return struct.unpack(">II", data[16:24])


def check_png(path: Path, min_side: int = 300) -> tuple[int, int]:
    """A valid, non-empty PNG of at least ``min_side`` pixels each way whose pixels are not all one colour."""
    data = Path(path).read_bytes()
    assert len(data) > 5000, f"{path}: only {len(data)} bytes"
    w, h = png_size(data)
    assert w >= min_side and h >= min_side, f"{path}: {w}x{h}"
    pixels = decode_png(data)
    assert pixels.shape[:2] == (h, w)
    assert pixels.std() > 1.0, f"{path}: a blank image"
    return w, h


def decode_png(data: bytes) -> np.ndarray:
    """[H, W, C] uint8 pixels (Pillow comes with matplotlib)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def tb_events(tb_dir: Path):
    """Every event of the event files under ``tb_dir``, file by file in name order (their start order)."""
    from tensorboardX.proto import event_pb2

    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # records: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            yield event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4


def tb_images(tb_dir: Path) -> dict[tuple[str, int], np.ndarray]:
    """(tag, step) -> [H, W, 3] pixels of every image summary in the event files under ``tb_dir``."""
    out = {}
    for event in tb_events(tb_dir):
        for v in event.summary.value:
            if v.HasField("image"):
                img = decode_png(v.image.encoded_image_string)
                assert img.shape[:2] == (v.image.height, v.image.width)
                out[(v.tag, event.step)] = img
    return out
