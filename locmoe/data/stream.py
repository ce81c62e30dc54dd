"""Token streams read lazily: a 1-D sequence made of segments of bases (token files read on demand, or small
in-memory arrays of tokenised text), each kept in its own dtype.

Nothing here copies a whole stream: slicing a :class:`TokenStream` reads only the requested window and returns
it as int64, and splitting it into train/validation makes two views. A file base costs resident memory only
for the window being read, so a rank's memory does not grow with the corpus.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

SCAN_BYTES = 1 << 24  # the chunk read by scan_minmax: 16 MiB of resident memory, however large the file


class TokenStream:
    """Concatenation of ``seg_len[i]`` tokens of ``bases[seg_base[i]]`` starting at ``seg_start[i]``.

    bases: 1-D token sequences sliceable by ``[a:b]`` (FileTokens or in-memory arrays);
    seg_base, seg_start, seg_len: int64 [n_seg].
    """

    def __init__(self, bases: list, seg_base, seg_start, seg_len):
        self.bases = bases
        self.seg_base = np.asarray(seg_base, dtype=np.int64)
        self.seg_start = np.asarray(seg_start, dtype=np.int64)
        self.seg_len = np.asarray(seg_len, dtype=np.int64)
        self.ends = np.cumsum(self.seg_len)  # ends[i]: stream offset one past segment i

    @classmethod
    def of(cls, arrays: list) -> "TokenStream":
        """The concatenation of whole arrays, without copying them."""
        return cls(list(arrays), np.arange(len(arrays)), np.zeros(len(arrays)), [len(a) for a in arrays])

    @classmethod
    def concat(cls, streams: list["TokenStream"]) -> "TokenStream":
        bases, seg_base = [], []
        for s in streams:
            seg_base.append(s.seg_base + len(bases))
            bases.extend(s.bases)
        return cls(
            bases,
            np.concatenate(seg_base) if seg_base else [],
            np.concatenate([s.seg_start for s in streams]) if streams else [],
            np.concatenate([s.seg_len for s in streams]) if streams else [],
        )

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, key: slice) -> np.ndarray:
        """Tokens [start, stop) as a new int64 array; only step-1 slices (windows) are supported."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a TokenStream is read by contiguous slices, e.g. stream[a:b]")
        start, stop, _ = key.indices(len(self))
        out = np.empty(max(stop - start, 0), dtype=np.int64)
        i, pos = int(np.searchsorted(self.ends, start, side="right")), start
        while pos < stop:
            seg_begin = int(self.ends[i] - self.seg_len[i])
            a = int(self.seg_start[i]) + pos - seg_begin
            n = min(stop, int(self.ends[i])) - pos
            out[pos - start : pos - start + n] = self.bases[self.seg_base[i]][a : a + n]
            pos, i = pos + n, i + 1
        return out

    def split(self, at: int) -> tuple["TokenStream", "TokenStream"]:
        """Views of tokens [0, at) and [at, len)."""
        i = int(np.searchsorted(self.ends, at, side="left"))  # segment holding token at-1 (or the end)
        if i < len(self.ends):
            cut = at - int(self.ends[i] - self.seg_len[i])  # tokens of segment i that go to the head
            head = TokenStream(
                self.bases, self.seg_base[: i + 1], self.seg_start[: i + 1], np.append(self.seg_len[:i], cut)
            )
            tail = TokenStream(
                self.bases,
                self.seg_base[i:],
                np.append(self.seg_start[i] + cut, self.seg_start[i + 1 :]),
                np.append(self.seg_len[i] - cut, self.seg_len[i + 1 :]),
            )
            return head.drop_empty(), tail.drop_empty()
        return self, TokenStream(self.bases, [], [], [])

    def drop_empty(self) -> "TokenStream":
        keep = self.seg_len > 0
        return TokenStream(self.bases, self.seg_base[keep], self.seg_start[keep], self.seg_len[keep])


class FileTokens:
    """``count`` tokens of ``dtype`` at byte ``offset`` of a file, read on demand with ``pread``.

    Not a memory-map on purpose: on Linux a fault in a mapped file maps the whole page-cache folio around it
    (256 KiB per random window, measured by scripts/bench/data.py), so a mapped corpus's resident memory grows
    towards the file's size as a run samples it. pread copies exactly the window and keeps nothing; the
    kernel's page cache (shared by every rank) still serves repeated reads.
    """

    def __init__(self, path: Path, dtype, offset: int = 0, count: int = -1):
        self.path, self.dtype, self.offset = str(path), np.dtype(dtype), int(offset)
        self.count = (Path(path).stat().st_size - self.offset) // self.dtype.itemsize if count < 0 else int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.count)
        n = max(stop - start, 0) * self.dtype.itemsize
        fd, at, parts = _open_fd(self.path), self.offset + start * self.dtype.itemsize, []
        while n > 0:
            chunk = os.pread(fd, n, at)
            if not chunk:
                raise OSError(f"{self.path}: the file shrank while it was being read")
            parts.append(chunk)
            n, at = n - len(chunk), at + len(chunk)
        return np.frombuffer(b"".join(parts), dtype=self.dtype)


_FDS: "OrderedDict[tuple[int, str], int]" = OrderedDict()
MAX_OPEN = 64  # file descriptors kept open (least recently used closed first), per process


def _open_fd(path: str) -> int:
    key = (os.getpid(), path)  # a forked child opens its own
    fd = _FDS.pop(key, None)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        while len(_FDS) >= MAX_OPEN:
            (pid, _), old = _FDS.popitem(last=False)
            if pid == os.getpid():
                os.close(old)
    _FDS[key] = fd
    return fd


def scan_minmax(path: Path, dtype, offset: int = 0, count: int = -1) -> tuple[int, int]:
    """(smallest, largest) token of a file region, read in SCAN_BYTES chunks with ordinary reads.

    Plain reads into one buffer, not a memory-map: pages read through a map would stay in this process's
    resident set; pages read with readinto stay only in the kernel's shared page cache.
    """
    dtype = np.dtype(dtype)
    if count < 0:
        count = (path.stat().st_size - offset) // dtype.itemsize
    buf = np.empty(max(SCAN_BYTES // dtype.itemsize, 1), dtype=dtype)
    lo, hi, left = None, None, count
    with open(path, "rb") as f:
        f.seek(offset)
        while left > 0:
            n = min(left, len(buf))
            got = f.readinto(buf[:n].data.cast("B")) // dtype.itemsize  # .data: the slice's memoryview
            if got == 0:
                break
            part = buf[:got]
            lo = int(part.min()) if lo is None else min(lo, int(part.min()))
            hi = int(part.max()) if hi is None else max(hi, int(part.max()))
            left -= got
    return (lo if lo is not None else 0), (hi if hi is not None else -1)
