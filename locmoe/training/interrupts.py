"""Ctrl-C and SIGTERM during ``locmoe train``: the first signal asks the loop to stop after the step it is in
(its logging, validation and checkpoint included), a second one abandons the step at once. Either way the
command ends with one line naming the newest complete checkpoint and the resume command, and exit code
128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as shells and schedulers expect.

Signal handlers belong to the process, so the request they record is module state here too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: Optional[int] = None  # the first signal received, until the handlers are restored


class Interrupted(Exception):
    """The run stopped on a signal (not a LocMoEError: it is not bad input, and its exit code is 128 + signal).

    ``step``: the last completed step, None when the run stopped before its first step or abandoned one."""

    def __init__(self, signum: int, step: Optional[int] = None):
        super().__init__(f"{signal.Signals(signum).name} after step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def requested() -> Optional[int]:
    """The signal that asked the run to stop (SIGINT / SIGTERM), or None."""
    return _requested


def _handle(signum: int, frame) -> None:
    global _requested
    if _requested is not None:  # a second signal: the user will not wait for the step to end
        raise Interrupted(signum)
    _requested = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM record a stop request (``requested()``) instead of raising
    KeyboardInterrupt or killing the process; the previous handlers come back at its end. Outside the main
    thread (where Python cannot set handlers) the block changes nothing."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _requested = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested = None


def stop_line(err: Interrupted, newest: Optional[Path], command: list[str]) -> str:
    """The one line a stopped run prints: what stopped it, the newest complete checkpoint and the command that
    goes on from it (``command``, the run's own without ``--resume``, gets ``--resume`` when there is one)."""
    import shlex

    what = signal.Signals(err.signum).name
    where = f" after step {err.step}" if err.step is not None else ""
    if newest is None:
        return f"interrupted by {what}{where}: no checkpoint yet; start again with: {shlex.join(command)}"
    resume = shlex.join([*command, "--resume"])
    return f"interrupted by {what}{where}: newest checkpoint {newest}; resume with: {resume}"
