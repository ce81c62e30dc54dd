"""Heterogeneous planner: memory model, exhaustive search against an independent enumeration, errors."""

import itertools

import pytest

from locmoe.planning.errors import PlanningError
from locmoe.planning.hetero import (
    DeployConfig,
    InstanceModel,
    Workload,
    candidate_configs,
    naive_deployment,
    plan_deployment,
)
from locmoe.planning.profiles import DEFAULT_KINDS, DEFAULT_MODEL, load_profiles, parse_budget

W = Workload(mean_prompt=1000, mean_output=300, max_context=5120)


def test_memory_model_decides_what_fits():
    a100, h200 = DEFAULT_KINDS["a100-40gb"], DEFAULT_KINDS["h200"]
    # 93 GB of bf16 weights: not on one or two 40 GB devices, on four; on one H200 with room for KV
    assert not InstanceModel(a100, DEFAULT_MODEL, DeployConfig("a100-40gb", 2, 2, 8)).fits(W.max_context)
    assert InstanceModel(a100, DEFAULT_MODEL, DeployConfig("a100-40gb", 4, 4, 8)).fits(W.max_context)
    one = InstanceModel(h200, DEFAULT_MODEL, DeployConfig("h200", 1, 1, 8))
    assert one.fits(W.max_context) and one.kv_token_capacity() > 8 * W.max_context
    assert not InstanceModel(h200, DEFAULT_MODEL, DeployConfig("h200", 1, 1, 256)).fits(W.max_context)


def test_faster_device_is_faster_and_batching_pays():
    cfg = dict(tp=4, ep=4, batch=32)
    fast = InstanceModel(DEFAULT_KINDS["h200"], DEFAULT_MODEL, DeployConfig("h200", **cfg))
    slow = InstanceModel(DEFAULT_KINDS["a100-40gb"], DEFAULT_MODEL, DeployConfig("a100-40gb", **cfg))
    assert fast.throughput(W) > slow.throughput(W)
    assert fast.decode_step_time(64, 1000) / 64 < fast.decode_step_time(8, 1000) / 8


def brute_force_best(kinds, budget):
    """Independent check: every multiset of candidate instances per kind that fits the budget."""
    best = 0.0
    per_kind = []
    for name, count in budget.items():
        cands = [
            (c.devices, InstanceModel(kinds[name], DEFAULT_MODEL, c).throughput(W))
            for c in candidate_configs(kinds[name], DEFAULT_MODEL, W, count)
        ]
        options = {0.0}
        for n in range(1, count + 1):
            for combo in itertools.combinations_with_replacement(cands, n):
                if sum(d for d, _ in combo) <= count:
                    options.add(sum(t for _, t in combo))
        per_kind.append(options)
    for combo in itertools.product(*per_kind):
        best = max(best, sum(combo))
    return best


@pytest.mark.parametrize("budget", [{"h200": 2, "a100-40gb": 4}, {"h200": 3}, {"a100-40gb": 5}])
def test_exhaustive_search_finds_the_best_mix(budget):
    dep = plan_deployment(DEFAULT_KINDS, DEFAULT_MODEL, W, budget)
    assert dep.throughput == pytest.approx(brute_force_best(DEFAULT_KINDS, budget), rel=1e-12)
    for kind, used in dep.devices_used().items():
        assert used <= budget[kind]
    assert dep.throughput >= naive_deployment(DEFAULT_KINDS, DEFAULT_MODEL, W, budget).throughput


def test_infeasible_budget_says_what_does_not_fit():
    with pytest.raises(PlanningError) as err:
        plan_deployment(DEFAULT_KINDS, DEFAULT_MODEL, W, {"a100-40gb": 2})
    msg = str(err.value)
    assert msg.startswith("infeasible budget: model mixtral-8x7b-like needs 93 GB of weights")
    assert "2 x a100-40gb (40 GB each): the largest instance, 2 devices, has 72 GB usable" in msg
    with pytest.raises(PlanningError, match="infeasible budget"):
        naive_deployment(DEFAULT_KINDS, DEFAULT_MODEL, W, {"a100-40gb": 2})


def test_unknown_kind_and_bad_budget_text():
    with pytest.raises(PlanningError, match=r"budget names device kinds \['tpu'\]; known kinds"):
        plan_deployment(DEFAULT_KINDS, DEFAULT_MODEL, W, {"tpu": 4})
    assert parse_budget("h200=8, a100-40gb=16") == {"h200": 8, "a100-40gb": 16}
    with pytest.raises(PlanningError, match="budget entry 'h200:8': expected KIND=COUNT"):
        parse_budget("h200:8")


def test_profile_file_replaces_defaults_and_rejects_unknown_fields(tmp_path):
    good = tmp_path / "p.json"
    good.write_text('{"device_kinds": {"x": {"tflops": 100, "mem_gb": 80, "hbm_tbps": 2, "link_gbps": 100}}}')
    kinds, model, _ = load_profiles(good)
    assert list(kinds) == ["x"] and model == DEFAULT_MODEL
    bad = tmp_path / "bad.json"
    bad.write_text('{"device_kinds": {"x": {"tflop": 100}}}')
    with pytest.raises(PlanningError, match=r"device_kinds.x: unknown fields \['tflop'\]"):
        load_profiles(bad)
