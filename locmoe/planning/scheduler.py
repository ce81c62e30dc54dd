"""Request schedulers for a set of serving instances of unequal speed.

- :class:`EarliestCompletionScheduler` (after arXiv 2504.15303's capacity-aware scheduler): requests wait
  in one central FIFO; each goes to the instance with the earliest *predicted* completion time,
  ``wait + prefill(prompt) + expected_output × decode_step(batch + 1)``, where ``wait`` is 0 on a free
  slot and otherwise the predicted end of the running request whose slot it would take (requests ahead
  of it in the queue take the earlier slots). The first ``LOOKAHEAD`` waiting requests may choose a slot
  that is not free yet and keep waiting for it (a fast instance soon is better than a slow one now);
  the rest only choose among instances with room now, so no slot idles while requests wait. A request
  is only ever placed on an instance with room: the scheduler never exceeds an instance's capacity.
- :class:`RoundRobinScheduler`: the baseline; request i goes to instance i mod n and waits in that
  instance's own queue until it has room.

*Capacity* of an instance: at most ``max_batch`` running requests, and KV tokens reserved for them
(``prompt + max_output`` each, what the request may grow to) at most ``kv_capacity``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from locmoe.planning.errors import PlanningError
from locmoe.planning.hetero import InstanceModel


@dataclass(kw_only=True)
class Request:
    rid: int
    arrival: float
    prompt: int
    output: int  # tokens it will generate (known to the simulator only)
    max_output: int  # the request's limit: what capacity is reserved for
    expected_output: float  # what a scheduler may assume (e.g. the workload mean)

    @property
    def kv_reserve(self) -> int:
        return self.prompt + self.max_output


@dataclass
class InstanceState:
    """One serving instance as the scheduler sees it."""

    name: str
    model: InstanceModel
    max_batch: int
    kv_capacity: int
    running: dict = field(default_factory=dict)  # rid -> [request, tokens generated so far]
    kv_reserved: int = 0
    queue: deque = field(default_factory=deque)  # round-robin's per-instance queue

    def has_room(self, req: Request) -> bool:
        return len(self.running) < self.max_batch and self.kv_reserved + req.kv_reserve <= self.kv_capacity

    def can_ever_hold(self, req: Request) -> bool:
        return req.kv_reserve <= self.kv_capacity

    def context(self) -> float:
        """Mean context (prompt + generated) of the running requests."""
        if not self.running:
            return 0.0
        return sum(r.prompt + done for r, done in self.running.values()) / len(self.running)


class EarliestCompletionScheduler:
    name = "earliest-completion"
    LOOKAHEAD = 128

    def __init__(self):
        self.waiting: deque = deque()

    def submit(self, req: Request, now: float, instances: list[InstanceState]) -> None:
        if not any(i.can_ever_hold(req) for i in instances):
            raise PlanningError(
                f"request {req.rid} needs {req.kv_reserve} KV tokens; the largest instance "
                f"holds {max(i.kv_capacity for i in instances)}"
            )
        self.waiting.append(req)

    def slot_times(self, inst: InstanceState) -> list[float]:
        """Predicted delay until each of the instance's batch slots is free: 0 for a free slot, else when
        its running request ends (remaining expected tokens × the current step time), soonest first."""
        free = [0.0] * max(inst.max_batch - len(inst.running), 0)
        if not inst.running:
            return free
        step = inst.model.decode_step_time(len(inst.running), inst.context())
        return free + sorted(max(r.expected_output - done, 1.0) * step for r, done in inst.running.values())

    def predicted_finish(self, req: Request, inst: InstanceState, wait: float) -> float:
        """Delay until ``req`` would finish on ``inst`` if it started after ``wait`` seconds."""
        if not inst.can_ever_hold(req):
            return float("inf")
        batch = min(len(inst.running) + 1, inst.max_batch)
        ctx = req.prompt + req.expected_output / 2
        decode = req.expected_output * inst.model.decode_step_time(batch, ctx)
        return wait + inst.model.prefill_time(req.prompt) + decode

    def dispatch(self, now: float, instances: list[InstanceState]) -> list[tuple[Request, int]]:
        """Assignments to make now, in order (the caller admits each before the next is computed).

        Waiting requests in FIFO order. The first ``LOOKAHEAD`` each claim the slot, free now or freed
        later, that finishes them first (so later ones see it taken) and wait when that slot is not free
        yet; the rest take the best instance with room now (work-conserving), or wait."""
        out, keep = [], deque()
        slots = [self.slot_times(inst) for inst in instances]
        claimed = [0] * len(instances)
        pos = 0
        while self.waiting:
            if pos >= self.LOOKAHEAD and not any(len(i.running) < i.max_batch for i in instances):
                break  # every batch full: only the head could wait
            req = self.waiting.popleft()
            best = self._choose(req, instances, slots, claimed, may_wait=pos < self.LOOKAHEAD)
            pos += 1
            if best is not None and instances[best].has_room(req):
                out.append((req, best))
                _reserve(instances[best], req)  # so the next request sees this one
            else:
                keep.append(req)
        keep.extend(self.waiting)
        self.waiting = keep
        for req, i in out:  # the caller admits them for real
            _release(instances[i], req)
        return out

    def _choose(self, req, instances, slots, claimed, may_wait: bool) -> int | None:
        """The instance whose next unclaimed slot finishes ``req`` first (only those with room now unless
        ``may_wait``); the slot is claimed. None if no instance qualifies."""
        best, best_t = None, float("inf")
        for i, inst in enumerate(instances):
            room = inst.has_room(req)
            if claimed[i] >= len(slots[i]) or not (room or may_wait):
                continue
            # no room: wait for the next unclaimed slot, or for the last one if that slot is free but the
            # KV cache is too full for this request
            wait = 0.0 if room else (slots[i][claimed[i]] or slots[i][-1])
            t = self.predicted_finish(req, inst, wait)
            if t < best_t:
                best, best_t = i, t
        if best is not None:
            claimed[best] += 1
            if not instances[best].has_room(req):
                return None
        return best


class RoundRobinScheduler:
    name = "round-robin"

    def __init__(self):
        self.next = 0

    def submit(self, req: Request, now: float, instances: list[InstanceState]) -> None:
        for _ in range(len(instances)):  # skip instances that could never hold it
            inst = instances[self.next % len(instances)]
            self.next += 1
            if inst.can_ever_hold(req):
                inst.queue.append(req)
                return
        raise PlanningError(f"request {req.rid} needs {req.kv_reserve} KV tokens; no instance holds that many")

    def dispatch(self, now: float, instances: list[InstanceState]) -> list[tuple[Request, int]]:
        out = []
        for i, inst in enumerate(instances):
            while inst.queue and inst.has_room(inst.queue[0]):
                req = inst.queue.popleft()
                out.append((req, i))
                _reserve(inst, req)
        for req, i in out:
            _release(instances[i], req)
        return out


def _reserve(inst: InstanceState, req: Request) -> None:
    inst.running[req.rid] = [req, 0]
    inst.kv_reserved += req.kv_reserve


def _release(inst: InstanceState, req: Request) -> None:
    del inst.running[req.rid]
    inst.kv_reserved -= req.kv_reserve


SCHEDULERS = {"earliest-completion": EarliestCompletionScheduler, "round-robin": RoundRobinScheduler}
