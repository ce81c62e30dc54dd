"""Device timing: CUDA events on GPU (the host runs ahead; events time the device), perf_counter on CPU."""

from __future__ import annotations

import time
from typing import Callable, Optional, Union, cast

import torch


class StageClock:
    """Named timestamps taken on a stream; ``read`` returns milliseconds since the first mark."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Union[torch.cuda.Event, float]]] = []  # events on CUDA, else seconds

    def mark(self, name: str, stream: Optional["torch.cuda.Stream"] = None) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(stream)
            self.marks.append((name, ev))
        else:
            self.marks.append((name, time.perf_counter()))

    def read(self) -> dict[str, float]:
        if not self.marks:
            return {}
        if self.cuda:
            torch.cuda.synchronize()
            events = cast("list[tuple[str, torch.cuda.Event]]", self.marks)
            t0 = events[0][1]
            return {name: t0.elapsed_time(ev) for name, ev in events}
        times = cast("list[tuple[str, float]]", self.marks)
        t0 = times[0][1]
        return {name: (t - t0) * 1e3 for name, t in times}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 2,
    reps: int = 5,
    rounds: int = 3,
    barrier: Optional[Callable[[], object]] = None,
) -> float:
    """Seconds per call of ``fn``: ``reps`` back-to-back calls timed together, the median of ``rounds``.
    ``barrier`` (e.g. a process-group barrier) lines ranks up before each round of a collective."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(rounds):
        if barrier is not None:
            barrier()
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(reps):
                fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b) / 1e3 / reps)
        else:
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append((time.perf_counter() - t) / reps)
    return sorted(times)[len(times) // 2]
