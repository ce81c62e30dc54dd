"""Where the expert pipeline's work runs: the compute lane (the current stream) and a communication lane.

On CUDA the communication lane is its own stream: an all-to-all issued there waits (by event) only for the
rows it sends, not for whatever compute was queued before it, and compute waits (by event) only for the
rows it needs. NCCL orders its kernels after the stream that is current when the collective is called, so
issuing it under ``torch.cuda.stream(comm)`` is what keeps it off the compute stream's queue. Tensors that
cross streams are marked with ``record_stream`` so the caching allocator does not reuse them too early.

On CPU (gloo) the lane launches asynchronous collectives and waits on their handles when the rows are
needed; without overlap every collective completes before the next step is issued.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

Start = Callable[[], Callable[[], torch.Tensor]]  # launches a collective, returns ``finish``


class Pending:
    """Rows in flight on the communication lane."""

    def __init__(
        self,
        finish: Callable[[], torch.Tensor],
        event: Optional[torch.cuda.Event] = None,
        stream: Optional[torch.cuda.Stream] = None,
    ):
        self._finish, self._event, self._stream = finish, event, stream

    def result(self) -> torch.Tensor:
        out = self._finish()
        if self._event is not None:
            assert self._stream is not None  # given with the event
            self._stream.wait_event(self._event)
            out.record_stream(self._stream)
        return out


class Lanes:
    def __init__(self, device: torch.device, overlap: bool):
        self.overlap = overlap
        self.cuda = overlap and device.type == "cuda"
        self.compute = torch.cuda.current_stream(device) if self.cuda else None
        self.comm = torch.cuda.Stream(device) if self.cuda else None

    def launch(self, start: Start, inputs: Sequence[torch.Tensor], clock=None, name: str = "") -> Pending:
        """Run a collective on the communication lane once ``inputs`` are ready on the compute lane."""
        if self.cuda:
            assert self.comm is not None and self.compute is not None
            ready = torch.cuda.Event()
            ready.record(self.compute)
            self.comm.wait_event(ready)
            with torch.cuda.stream(self.comm):
                for t in inputs:
                    t.record_stream(self.comm)
                _mark(clock, name + ":start", self.comm)
                out = start()()  # finished *on the comm stream*; the host does not wait
                _mark(clock, name + ":end", self.comm)
                done = torch.cuda.Event()
                done.record(self.comm)
            return Pending(lambda: out, done, self.compute)
        if self.overlap:
            _mark(clock, name + ":start")
            finish = start()
            return Pending(lambda: _finish_marked(finish, clock, name))
        _mark(clock, name + ":start")
        out = start()()
        _mark(clock, name + ":end")
        return Pending(lambda: out)

    def compute_mark(self, clock, name: str) -> None:
        _mark(clock, name, self.compute)

    def join(self) -> None:
        """The compute lane waits for everything issued on the communication lane."""
        if self.cuda:
            assert self.comm is not None and self.compute is not None
            self.compute.wait_stream(self.comm)


def _finish_marked(finish, clock, name: str) -> torch.Tensor:
    out = finish()
    _mark(clock, name + ":end")  # on CPU: when the host saw the rows arrive
    return out


def _mark(clock, name: str, stream: Optional["torch.cuda.Stream"] = None) -> None:
    if clock is not None:
        clock.mark(name, stream)
