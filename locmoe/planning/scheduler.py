"""Request schedulers for a set of serving instances of unequal speed.

- :class:`EarliestCompletionScheduler` (after arXiv 2504.15303's capacity-aware scheduler): requests wait
  in one central FIFO; each goes to the instance with the earliest *predicted* completion time. An
  instance with room predicts ``now + prefill(prompt) + expected_output × decode_step(batch + 1)``; a full
  one adds the time until its first running request ends. When the best is a full instance the request
  keeps waiting (it is reconsidered at the next completion), so the scheduler never puts a request on
  an instance over its capacity.
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


@dataclass
class Request:
    rid: int
    arrival: float
    prompt: int
    output: int                  # tokens it will generate (known to the simulator only)
    max_output: int              # the request's limit: what capacity is reserved for
    expected_output: float       # what a scheduler may assume (e.g. the workload mean)

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
    running: dict = field(default_factory=dict)      # rid -> [request, tokens generated so far]
    kv_reserved: int = 0
    queue: deque = field(default_factory=deque)      # round-robin's per-instance queue

    def has_room(self, req: Request) -> bool:
        return len(self.running) < self.max_batch and self.kv_reserved + req.kv_reserve <= self.kv_capacity

    def can_ever_hold(self, req: Request) -> bool:
        return req.kv_reserve <= self.kv_capacity

    def context(self) -> float:
        """Mean context (prompt + generated) of the running requests."""
        if not self.running:
            return 0.0
        return sum(r.prompt + done for r, done in self.running.values()) / len(self.running)

    def time_to_free(self) -> float:
        """Predicted time until the running request closest to its end finishes."""
        if not self.running:
            return 0.0
        step = self.model.decode_step_time(len(self.running), self.context())
        return min(max(r.expected_output - done, 1.0) for r, done in self.running.values()) * step


class EarliestCompletionScheduler:
    name = "earliest-completion"

    def __init__(self):
        self.waiting: deque = deque()

    def submit(self, req: Request, now: float, instances: list[InstanceState]) -> None:
        if not any(i.can_ever_hold(req) for i in instances):
            raise PlanningError(f"request {req.rid} needs {req.kv_reserve} KV tokens; the largest instance "
                             f"holds {max(i.kv_capacity for i in instances)}")
        self.waiting.append(req)

    def predicted_finish(self, req: Request, inst: InstanceState, now: float) -> float:
        if not inst.can_ever_hold(req):
            return float("inf")
        wait = 0.0 if inst.has_room(req) else inst.time_to_free()
        batch = min(len(inst.running) + 1, inst.max_batch)
        ctx = (inst.context() * len(inst.running) + req.prompt) / (len(inst.running) + 1)
        return (now + wait + inst.model.prefill_time(req.prompt)
                + req.expected_output * inst.model.decode_step_time(batch, ctx + req.expected_output / 2))

    def dispatch(self, now: float, instances: list[InstanceState]) -> list[tuple[Request, int]]:
        """Assignments to make now, in order; the caller admits each before the next is computed."""
        out, keep = [], deque()
        while self.waiting:
            req = self.waiting.popleft()
            times = [self.predicted_finish(req, inst, now) for inst in instances]
            best = min(range(len(instances)), key=lambda i: (times[i], i))
            if instances[best].has_room(req):
                out.append((req, best))
                _reserve(instances[best], req)          # so the next request sees this one
            else:
                keep.append(req)
        self.waiting = keep
        for req, i in out:                              # the caller admits them for real
            _release(instances[i], req)
        return out


class RoundRobinScheduler:
    name = "round-robin"

    def __init__(self):
        self.next = 0

    def submit(self, req: Request, now: float, instances: list[InstanceState]) -> None:
        for _ in range(len(instances)):                 # skip instances that could never hold it
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
