"""Deterministic batches: the global batch of step s is a pure function of (seed, s), so resuming at step s
and running on any number of data-parallel ranks see the same sequences.

Each sequence is a window of seq_len + 1 tokens from one domain's stream; the domain is drawn in proportion
to its number of windows. Rank r of W takes rows r·B .. (r+1)·B of the global batch of W·B rows, or the rows
it is given (sequence placement, ``locmoe.data.placement``, moves rows between ranks). A stream is anything with
``len`` and contiguous slices (a TokenStream, or a plain array); only the windows of this rank are read.
"""

from __future__ import annotations

import numpy as np

from locmoe.data.corpus import Corpus


class BatchSampler:
    def __init__(self, corpus: Corpus, seq_len: int, batch_per_rank: int, *, rank: int, world: int, seed: int):
        self.corpus, self.seq_len, self.batch_per_rank = corpus, seq_len, batch_per_rank
        self.rank, self.world, self.seed = rank, world, seed

    def batch(
        self, step: int, micro: int = 0, split: str = "train", rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs [B, S], targets [B, S], domain [B]) of this rank, int64; ``rows`` [B]: which rows of the
        global batch (default this rank's block)."""
        streams = getattr(self.corpus, split)
        domains = sorted(streams)
        windows = np.array([len(streams[d]) - self.seq_len - 1 for d in domains], dtype=np.float64)
        tag = 0 if split == "train" else 1
        rng = np.random.default_rng([self.seed, tag, step, micro])
        B = self.batch_per_rank
        n = B * self.world
        pick = rng.choice(len(domains), size=n, p=windows / windows.sum())
        starts = (rng.random(n) * (windows[pick] + 1)).astype(np.int64)
        if rows is not None and (len(rows) != B or np.min(rows) < 0 or np.max(rows) >= n):
            raise ValueError(f"rows: {B} indices in [0, {n}) expected, got {len(rows)} ({rows!r})")
        mine = slice(self.rank * B, (self.rank + 1) * B) if rows is None else rows
        # only the drawn windows are read (and converted to int64): the streams stay on disk in their own dtype
        seqs = np.stack([streams[domains[p]][s : s + self.seq_len + 1] for p, s in zip(pick[mine], starts[mine])])
        seqs = seqs.astype(np.int64, copy=False)
        return seqs[:, :-1].copy(), seqs[:, 1:].copy(), np.asarray(domains)[pick[mine]].astype(np.int64)
