"""Schedulers and the discrete-event simulator: capacity is never exceeded, runs are deterministic."""

import pytest

from locmoe.planning.errors import PlanningError
from locmoe.planning.event_sim import mixed_requests, simulate, workload_of
from locmoe.planning.hetero import DeployConfig, InstanceModel
from locmoe.planning.profiles import DEFAULT_KINDS, DEFAULT_MODEL
from locmoe.planning.scheduler import (
    SCHEDULERS,
    EarliestCompletionScheduler,
    InstanceState,
    Request,
    RoundRobinScheduler,
)


def cluster(batch=8):
    """One fast instance (H200 x 2) and two slow ones (A100 x 4), small batches so capacity binds."""
    cfgs = [
        DeployConfig("h200", 2, 2, batch),
        DeployConfig("a100-40gb", 4, 4, batch),
        DeployConfig("a100-40gb", 4, 4, batch),
    ]
    return [InstanceModel(DEFAULT_KINDS[c.kind], DEFAULT_MODEL, c) for c in cfgs]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_no_instance_ever_runs_over_capacity(name):
    models = cluster(batch=4)
    reqs = mixed_requests(120, seed=1)
    res = simulate(models, reqs, SCHEDULERS[name]())
    assert sum(res.served) == len(reqs)  # everything completes
    for running, share, m in zip(res.max_running, res.max_kv_share, models):
        assert running <= m.config.batch and share <= 1.0
    assert max(res.max_running) == 4  # the limit was reached, so it was tested


def test_kv_capacity_binds_as_well_as_batch():
    m = InstanceModel(DEFAULT_KINDS["a100-40gb"], DEFAULT_MODEL, DeployConfig("a100-40gb", 4, 4, 256))
    reqs = mixed_requests(200, seed=2)  # 256 slots, but KV for only ~75 long requests
    res = simulate([m], reqs, EarliestCompletionScheduler())
    assert res.max_kv_share[0] <= 1.0 and res.max_running[0] < 256


class Greedy:
    """A scheduler that ignores capacity: the simulator must refuse it."""

    name = "greedy"

    def __init__(self):
        self.waiting = []

    def submit(self, req, now, instances):
        self.waiting.append(req)

    def dispatch(self, now, instances):
        out, self.waiting = [(r, 0) for r in self.waiting], []
        return out


def test_simulator_refuses_a_scheduler_that_overfills():
    with pytest.raises(PlanningError, match=r"scheduler greedy put request \d+ on .* over its capacity"):
        simulate(cluster(batch=2), mixed_requests(10, seed=0), Greedy())


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_simulation_is_deterministic_for_a_seed(name):
    models = cluster()
    a = simulate(models, mixed_requests(80, seed=3, rate_per_s=20.0), SCHEDULERS[name]())
    b = simulate(models, mixed_requests(80, seed=3, rate_per_s=20.0), SCHEDULERS[name]())
    c = simulate(models, mixed_requests(80, seed=4, rate_per_s=20.0), SCHEDULERS[name]())
    assert a == b
    assert a != c


def test_earliest_completion_beats_round_robin_on_unequal_instances():
    models = cluster()
    reqs = mixed_requests(200, seed=0)
    ec = simulate(models, reqs, EarliestCompletionScheduler())
    rr = simulate(models, reqs, RoundRobinScheduler())
    assert ec.output_tokens_per_s > rr.output_tokens_per_s
    assert ec.served[0] > rr.served[0]  # the fast instance gets more work


def test_single_request_goes_to_the_fastest_instance():
    insts = [InstanceState(str(i), m, m.config.batch, m.kv_token_capacity()) for i, m in enumerate(cluster())]
    sched = EarliestCompletionScheduler()
    request = Request(rid=0, arrival=0.0, prompt=1000, output=200, max_output=1024, expected_output=200.0)
    sched.submit(request, 0.0, insts)
    assert [i for _, i in sched.dispatch(0.0, insts)] == [0]
    assert all(not inst.running for inst in insts)  # dispatch leaves admission to the caller


def test_request_no_instance_can_hold():
    insts = [InstanceState(str(i), m, m.config.batch, m.kv_token_capacity()) for i, m in enumerate(cluster())]
    huge = Request(rid=0, arrival=0.0, prompt=10**7, output=10, max_output=10, expected_output=10.0)
    for sched in (EarliestCompletionScheduler(), RoundRobinScheduler()):
        with pytest.raises(PlanningError, match="request 0 needs 10000010 KV tokens"):
            sched.submit(huge, 0.0, insts)


def test_mixed_stream_lengths():
    reqs = mixed_requests(500, seed=0, long_share=0.5)
    longs = [r for r in reqs if r.prompt >= 1024]
    assert 200 < len(longs) < 300  # ~half long; binomial(500, 0.5) within 4.5 sigma
    assert all(64 <= r.prompt <= 4096 and 32 <= r.output <= 1024 for r in reqs)
    w = workload_of(reqs)
    assert w.max_context == max(r.prompt for r in reqs) + 1024
    assert all(r.expected_output == pytest.approx(w.mean_output) for r in reqs)
