"""The heartbeat and watchdog threads of one rank (``locmoe.liveness``: what they do and why)."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

from locmoe.liveness.store import Store, StoreGone
from locmoe.liveness.verdict import blame, describe

EXIT_FAILURE = 2  # a rank failed, and the line says which
EXIT_SIGTERM = 128 + int(signal.SIGTERM)  # stopped by SIGTERM while every rank was alive
SIGTERM_REASON = "SIGTERM"
_active: Optional["Liveness"] = None


def active() -> Optional["Liveness"]:
    """The running monitor of this process, if any."""
    return _active


def beat_interval(timeout_s: float) -> float:
    """Heartbeat period: ``timeout_s / 20`` within [0.5 s, 5 s] (600 s → 5 s, 20 s → 1 s)."""
    return min(5.0, max(0.5, timeout_s / 20))


class Liveness:
    """Heartbeat, neighbour watch, diagnosis and the one-line exit of one rank (see the module docstring).

    ``store_host`` names the store in messages; ``store_rank`` is the rank whose process hosts it (rank 0 of a
    bare launch) or None (torchrun's agent, files). ``exit`` and ``err_fd`` are for tests.
    """

    def __init__(
        self,
        store: Store,
        rank: int,
        world: int,
        timeout_s: float,
        *,
        store_host: str = "",
        store_rank: Optional[int] = None,
        watch: bool = True,
        label: str = "locmoe train",
        beat_s: Optional[float] = None,
        exit: Callable[[int], None] = os._exit,
        err_fd: int = 2,
    ):
        self.store, self.rank, self.world, self.timeout_s = store, rank, world, float(timeout_s)
        self.store_host, self.store_rank, self.watch, self.label = store_host, store_rank, watch, label
        self.beat_s = beat_s or beat_interval(timeout_s)
        self.diag_s = 3 * self.beat_s  # a live rank beats at least twice in this window
        self.grace_s = min(self.timeout_s, 5 * self.beat_s)  # a peer's own error: let ours surface first
        self._exit, self._err_fd = exit, err_fd
        self._wake, self._stop, self._lock = threading.Event(), threading.Event(), threading.Lock()
        self._running = self._ended = False
        self._failure: Optional[str] = None
        self._failed_at = self._exit_at = None
        self._exit_code = EXIT_FAILURE
        self._store_error: Optional[str] = None
        self._last_ok = time.monotonic()
        self._count = 0
        self._watched = self._next(rank)
        self._seen, self._seen_at, self._error_seen_at = None, time.monotonic(), None
        self._old_sigterm = None
        self._threads: list = []

    # ------------------------------------------------------------------ life cycle (main thread)

    def start(self) -> "Liveness":
        global _active
        self.store.set(f"state/{self.rank}", "")  # running; then the first beat: once a peer sees the
        self.store.setdefault("verdict", "")  # beat, every key it reads in one round trip exists
        self._beat()
        self._running, _active = True, self
        self._threads = [
            threading.Thread(target=self._run_beats, name="locmoe-heartbeat", daemon=True),
            threading.Thread(target=self._run_watchdog, name="locmoe-watchdog", daemon=True),
        ]
        for t in self._threads:
            t.start()
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        atexit.register(self.leave, "exited")
        return self

    def fail(self, reason: str) -> None:
        """A collective failed (or SIGTERM came): diagnose and end the process; returns only when stopped."""
        if not self._running:
            return
        if self._failure is None:  # noticed at the next beat: a peer that just died has closed its sockets
            self._failure, self._failed_at = reason, time.monotonic()
        while True:  # the heartbeat thread ends the process
            time.sleep(3600)

    def _on_sigterm(self, signum, frame) -> None:
        if self._running:
            self.fail(SIGTERM_REASON)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # left already (from another thread): die as usual
        os.kill(os.getpid(), signal.SIGTERM)

    def leave(self, state: str = "done") -> None:
        """This rank leaves the job (``done``, ``exited`` or ``error: ...``): stop beating, tell the peers; the
        store's host waits (bounded) until the others have left too, so they never find the store gone."""
        global _active
        if not self._running:
            return
        self._running = False
        if _active is self:
            _active = None
        self._stop.set()
        self._wake.set()
        self._threads[0].join(self.beat_s + 5)
        if not self._threads[0].is_alive() and not self._ended and self._store_alive():
            try:
                self.store.set(f"state/{self.rank}", state)
                if self.store_rank == self.rank:
                    self._wait_for_peers(time.monotonic() + min(self.timeout_s, self.grace_s + self.diag_s))
            except Exception:  # noqa: BLE001 — leaving must not turn into an error
                pass
        if not self._threads[0].is_alive():  # else the heartbeat may still be in a request
            getattr(self.store, "close", lambda: None)()
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)

    # ------------------------------------------------------------------ heartbeat thread

    def _beat(self) -> None:
        self._count += 1
        self.store.set(f"beat/{self.rank}", f"{self._count} {time.time():.3f}")

    def _store_alive(self) -> bool:
        return getattr(self.store, "alive", lambda: True)()

    def _run_beats(self) -> None:
        first = None  # (snapshot, when) once a failure is being diagnosed
        while not self._stop.is_set() and not self._ended:
            try:
                if not self._store_alive():
                    raise StoreGone("the connection to it closed")
                self._beat()
                watched = self._watched if self.watch and self._failure is None else None
                verdict, *neighbour = self._look(watched)
                if verdict:
                    return self._end(verdict)
                if self._failure is not None:
                    first = first or (self._snapshot(), time.monotonic())
                    if time.monotonic() - first[1] >= self.diag_s:
                        return self._conclude(first[0], self._snapshot())
                elif watched is not None:
                    self._watch_neighbour(watched, *neighbour)
                self._last_ok = time.monotonic()
            except Exception as err:  # noqa: BLE001 — the store is gone
                self._store_error = str(err) if isinstance(err, StoreGone) else describe(err, 80)
                # (a broken client does not reconnect: from here the watchdog decides)
                if self._failure is not None:
                    self._end(self._store_verdict(), publish=False, via_store=False)
                return
            self._wake.wait(self.beat_s)
            self._wake.clear()

    def _look(self, n: Optional[int]) -> list:
        """[verdict, beat of n, state of n] in one round trip (a store's in-flight requests are what fails, with
        a C++ stack trace on stderr, when its host dies); n's keys exist once its first beat does."""
        if n is None:
            return [self.store.get_many(["verdict"])[0], None, None]
        if self._seen is None and self.store.get(f"beat/{n}") is None:  # not started (yet)
            return [self.store.get_many(["verdict"])[0], None, self.store.get(f"state/{n}")]
        return self.store.get_many(["verdict", f"beat/{n}", f"state/{n}"])

    def _snapshot(self) -> list:
        return [(self.store.get(f"beat/{r}"), self.store.get(f"state/{r}")) for r in range(self.world)]

    def _conclude(self, first: list, second: list) -> None:
        verdict = blame(first, second, self.rank, time.time())
        if verdict is not None:
            return self._end(verdict, publish=True)
        if self._failure == SIGTERM_REASON:
            return self._end(
                f"rank {self.rank} of {self.world} was stopped by SIGTERM while every rank was alive", EXIT_SIGTERM
            )
        self._end(
            f"a collective failed on rank {self.rank} of {self.world} while every rank is alive (did the "
            f"ranks run different collectives?): {self._failure}"
        )

    def _watch_neighbour(self, n: int, beat: Optional[str], state: Optional[str]) -> None:
        now = time.monotonic()
        state = state or ""
        if not state:
            if beat != self._seen:
                self._seen, self._seen_at = beat, now
            elif now - self._seen_at > self.timeout_s:
                self._end(
                    f"rank {n} of {self.world} stopped responding (no heartbeat for {now - self._seen_at:.0f}"
                    " s: stalled or killed)",
                    publish=True,
                )
        elif state.startswith("error: "):
            self._error_seen_at = self._error_seen_at or now
            if now - self._error_seen_at > self.grace_s:
                self._end(f"rank {n} of {self.world} ended with an error ({state[7:]})", publish=True)
        elif state.startswith("ended: "):
            self._end(state[7:], publish=True)
        else:  # done / exited: watch the next rank still running
            self._watched, self._seen, self._seen_at = self._next(n), None, now

    def _next(self, r: int) -> Optional[int]:
        n = (r + 1) % self.world
        return None if n == self.rank else n

    # ------------------------------------------------------------------ watchdog thread and the exit

    def _run_watchdog(self) -> None:
        while not self._stop.wait(min(0.5, self.beat_s / 2)):
            now = time.monotonic()
            if self._exit_at is not None:
                if now > self._exit_at:
                    self._exit(self._exit_code)
                continue
            quiet = now - self._last_ok
            beating = self._threads[0].is_alive()
            if self._failure is None and quiet > self.timeout_s:
                self._end(self._store_verdict(), publish=False, via_store=False)
            elif (
                self._failure is not None
                and self._failed_at is not None
                and (not beating or (now - self._failed_at > self.diag_s + 2 * self.beat_s and quiet > 2 * self.beat_s))
            ):
                self._end(self._store_verdict(), publish=False, via_store=False)

    def _store_verdict(self) -> str:
        why = self._store_error or f"no answer for {time.monotonic() - self._last_ok:.0f} s"
        if self.store_rank is not None and self.store_rank != self.rank:
            return (
                f"rank {self.store_rank} of {self.world} stopped responding (the job's store it hosts at "
                f"{self.store_host} stopped answering: {why}; stalled or killed)"
            )
        return f"the job's store at {self.store_host or '?'} stopped answering ({why}): its host stalled or died"

    def _end(self, verdict: str, code: int = EXIT_FAILURE, publish: bool = False, via_store: bool = True) -> None:
        """Print the one line, tell the peers (best effort: the watchdog enforces the exit if the store hangs)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._exit_code = code
        self._exit_at = time.monotonic() + 3 * self.beat_s + 2
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.write(self._err_fd, f"{self.label}: RankFailure: {verdict}; rank {self.rank} stops (exit {code})\n".encode())
        if via_store and self._store_alive():
            try:
                if publish:
                    self.store.set("verdict", verdict)
                self.store.set(f"state/{self.rank}", "ended: " + verdict)
                if self.store_rank == self.rank:  # keep the store up until the peers have read it
                    self._wait_for_peers(self._exit_at - 1)
            except Exception:  # noqa: BLE001
                pass
        self._exit(code)

    def _wait_for_peers(self, deadline: float) -> None:
        others = [r for r in range(self.world) if r != self.rank]
        while time.monotonic() < deadline and any(not self.store.get(f"state/{r}") for r in others):
            time.sleep(0.2)
