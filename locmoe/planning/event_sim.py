"""Discrete-event simulation of serving instances with continuous batching, to compare schedulers.

Each instance runs steps back to back while it has work. A step decodes one token for every running
request that finished its prefill and prefills the requests admitted since the last step (their first
token comes at the step's end); it lasts ``decode_step_time(decoding, mean context) + Σ prefill_time``
from the instance's :class:`~locmoe.planning.hetero.InstanceModel`. A request that reaches its output
length completes and frees its capacity; after every arrival and every step the scheduler may admit
waiting requests. The simulator itself checks capacity at every admission and raises if a scheduler
exceeds it. Events are ordered by (time, sequence number), and the request stream comes from a seeded
generator, so a run is a deterministic function of its inputs and seed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from locmoe.planning.errors import PlanningError
from locmoe.planning.hetero import InstanceModel, Workload
from locmoe.planning.scheduler import InstanceState, Request

SHORT = {"prompt": (64, 512), "output": (32, 256)}
LONG = {"prompt": (1024, 4096), "output": (256, 1024)}


def mixed_requests(
    n: int,
    seed: int = 0,
    rate_per_s: float | None = None,
    long_share: float = 0.5,
    max_output: int = 1024,
    expected_output: float | None = None,
) -> list[Request]:
    """``n`` requests, ``long_share`` of them long (prompt 1–4k, output 256–1024 tokens), the rest short
    (prompt 64–512, output 32–256), uniform inside each range; Poisson arrivals at ``rate_per_s`` (all at
    t = 0 when None). Schedulers see ``expected_output`` (default: the stream's mean output), not the truth."""
    rng = np.random.default_rng(seed)
    is_long = rng.random(n) < long_share
    prompt = np.where(
        is_long, rng.integers(*LONG["prompt"], n, endpoint=True), rng.integers(*SHORT["prompt"], n, endpoint=True)
    )
    output = np.where(
        is_long, rng.integers(*LONG["output"], n, endpoint=True), rng.integers(*SHORT["output"], n, endpoint=True)
    )
    arrival = np.zeros(n) if rate_per_s is None else np.cumsum(rng.exponential(1.0 / rate_per_s, n))
    guess = float(output.mean()) if expected_output is None else expected_output
    return [
        Request(
            rid=i,
            arrival=float(arrival[i]),
            prompt=int(prompt[i]),
            output=int(output[i]),
            max_output=max_output,
            expected_output=guess,
        )
        for i in range(n)
    ]


def workload_of(requests: list[Request]) -> Workload:
    """Mean lengths of a stream, and the longest context a request may reach."""
    return Workload(
        float(np.mean([r.prompt for r in requests])),
        float(np.mean([r.output for r in requests])),
        int(max(r.prompt + r.max_output for r in requests)),
    )


@dataclass(kw_only=True)
class SimResult:
    scheduler: str
    requests: int
    makespan_s: float
    output_tokens_per_s: float
    mean_latency_s: float
    p90_latency_s: float
    max_running: list  # most requests running at once, per instance
    max_kv_share: list  # most KV reserved ÷ capacity, per instance
    served: list  # requests completed, per instance

    def as_row(self) -> dict:
        return {
            "scheduler": self.scheduler,
            "requests": self.requests,
            "makespan_s": self.makespan_s,
            "output_tok_per_s": self.output_tokens_per_s,
            "mean_latency_s": self.mean_latency_s,
            "p90_latency_s": self.p90_latency_s,
        }


def simulate(models: list[InstanceModel], requests: list[Request], scheduler) -> SimResult:
    """Run ``requests`` through instances built from ``models`` under ``scheduler``."""
    insts = [
        InstanceState(f"{m.config.kind}/tp{m.config.tp}ep{m.config.ep}#{i}", m, m.config.batch, m.kv_token_capacity())
        for i, m in enumerate(models)
    ]
    sim = _Sim(insts, scheduler)
    for r in sorted(requests, key=lambda r: (r.arrival, r.rid)):
        sim.push(r.arrival, "arrive", r)
    sim.run()
    lat = np.array([sim.finish[r.rid] - r.arrival for r in requests])
    start = min(r.arrival for r in requests)
    makespan = max(sim.finish.values()) - start
    return SimResult(
        scheduler=scheduler.name,
        requests=len(requests),
        makespan_s=makespan,
        output_tokens_per_s=sum(r.output for r in requests) / makespan,
        mean_latency_s=float(lat.mean()),
        p90_latency_s=float(np.percentile(lat, 90)),
        max_running=sim.max_running,
        max_kv_share=sim.max_kv,
        served=sim.served,
    )


class _Sim:
    def __init__(self, insts: list[InstanceState], scheduler):
        self.insts, self.sched = insts, scheduler
        self.events: list = []
        self.seq = 0
        self.busy = [False] * len(insts)
        self.pending = [[] for _ in insts]  # admitted, waiting for their prefill step
        self.finish: dict = {}
        self.max_running = [0] * len(insts)
        self.max_kv = [0.0] * len(insts)
        self.served = [0] * len(insts)

    def push(self, t: float, kind: str, payload) -> None:
        heapq.heappush(self.events, (t, self.seq, kind, payload))
        self.seq += 1

    def run(self) -> None:
        while self.events:
            now = self.events[0][0]
            changed = False
            while self.events and self.events[0][0] == now:  # everything that happens at this instant
                _, _, kind, payload = heapq.heappop(self.events)
                if kind == "arrive":
                    self.sched.submit(payload, now, self.insts)
                    changed = True
                else:
                    changed |= self._end_step(payload, now)
            if changed:  # only arrivals and completions free room
                for req, i in self.sched.dispatch(now, self.insts):
                    self._admit(req, i)
            for i in range(len(self.insts)):
                if not self.busy[i] and self.insts[i].running:
                    self._start_step(i, now)

    def _admit(self, req: Request, i: int) -> None:
        inst = self.insts[i]
        if not inst.has_room(req):
            raise PlanningError(
                f"scheduler {self.sched.name} put request {req.rid} on {inst.name} over its "
                f"capacity ({len(inst.running)}/{inst.max_batch} running, {inst.kv_reserved}"
                f"+{req.kv_reserve}/{inst.kv_capacity} KV tokens)"
            )
        inst.running[req.rid] = [req, 0]
        inst.kv_reserved += req.kv_reserve
        self.pending[i].append(req.rid)
        self.max_running[i] = max(self.max_running[i], len(inst.running))
        self.max_kv[i] = max(self.max_kv[i], inst.kv_reserved / inst.kv_capacity)

    def _start_step(self, i: int, now: float) -> None:
        inst = self.insts[i]
        prefill = set(self.pending[i])
        self.pending[i] = []
        decoding = [rid for rid in inst.running if rid not in prefill]
        ctx = sum(inst.running[r][0].prompt + inst.running[r][1] for r in decoding) / len(decoding) if decoding else 0.0
        dt = inst.model.decode_step_time(len(decoding), ctx)
        dt += sum(inst.model.prefill_time(inst.running[r][0].prompt) for r in prefill)
        self.busy[i] = True
        self.push(now + dt, "step", (i, tuple(inst.running)))

    def _end_step(self, payload, now: float) -> bool:
        """Advance the step's requests by one token; True if any completed."""
        i, stepped = payload
        done = False
        inst = self.insts[i]
        self.busy[i] = False
        for rid in stepped:
            entry = inst.running[rid]
            entry[1] += 1
            if entry[1] >= entry[0].output:
                del inst.running[rid]
                inst.kv_reserved -= entry[0].kv_reserve
                self.finish[rid] = now
                self.served[i] += 1
                done = True
        return done
