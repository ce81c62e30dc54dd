"""The cost model's decisions on synthetic profiles: kernel by load, chunk count and order, fitting, and
the profile file format."""

import json

import numpy as np
import pytest

from locmoe.inference.calibration import KernelSample, LinkSample, Measurements, fit_profile
from locmoe.inference.cost_model import balance_breakeven, choose_kernel, kernel_seconds
from locmoe.inference.errors import InferenceError, ProfileError
from locmoe.inference.pipeline_plan import ChunkCost, comm_order, expected_counts, plan_pipeline, serial, simulate
from locmoe.inference.profile import DeviceProfile
from tests.inference.synthetic import profile

D, F = 1024, 512


def test_balanced_loads_pick_dense_and_skewed_loads_pick_grouped():
    p = profile()  # dense twice as fast per FLOP, pays for padding
    balanced = np.full(8, 512)
    skewed = np.array([2048, 256, 256, 256, 256, 512, 256, 256])  # same total rows
    assert balanced.sum() == skewed.sum()
    assert choose_kernel(p, balanced, D, F).kernel == "dense"
    assert choose_kernel(p, skewed, D, F).kernel == "grouped"
    # dense pays padding to the largest load: it loses once that load is about twice the mean (a bit more
    # here, since grouped also pays 2 us per expert)
    assert 2.0 < balance_breakeven(p, 8, 512, D, F) < 3.0


def test_a_profile_where_grouped_is_faster_always_picks_grouped():
    p = profile(grouped_tflops=300.0, dense_tflops=200.0)
    for loads in (np.full(8, 512), np.array([4000, 10, 10, 10, 10, 10, 10, 36])):
        assert choose_kernel(p, loads, D, F).kernel == "grouped"
    assert balance_breakeven(p, 8, 512, D, F) == 0.0


def test_many_small_experts_favour_dense_when_grouped_pays_per_expert():
    p = profile(grouped_tflops=200.0, dense_tflops=200.0, grouped_per_expert_s=20e-6)
    assert choose_kernel(p, np.full(64, 16), D, F).kernel == "dense"
    assert kernel_seconds(p, "grouped", np.zeros(4), D, F) == 0.0  # no rows: nothing runs


def test_simulated_pipeline_overlaps_and_orders():
    costs = [ChunkCost(1.0, 1.0, 1.0)] * 4
    assert comm_order(4, "interleaved") == [
        ("D", 0),
        ("D", 1),
        ("C", 0),
        ("D", 2),
        ("C", 1),
        ("D", 3),
        ("C", 2),
        ("C", 3),
    ]
    assert serial(costs) == 12.0
    assert simulate(costs, "interleaved") == 8.0  # the comm stream is the bottleneck
    assert simulate([ChunkCost(1.0, 3.0, 1.0)], "interleaved") == 5.0
    compute_bound = [ChunkCost(0.25, 2.0, 0.25)] * 4
    assert simulate(compute_bound, "interleaved") == pytest.approx(0.25 + 8.0 + 0.25)
    with pytest.raises(InferenceError, match="order"):
        comm_order(2, "zigzag")


def test_chunk_count_follows_the_balance_of_communication_and_compute():
    counts = lambda n: expected_counts([16384, 16384], 2, 32, n)  # noqa: E731  2 ranks, E=64, top-2
    slow_link = profile(grouped_tflops=400.0, dense_tflops=200.0, a2a_gbps=100.0, a2a_latency_s=30e-6)
    plan = plan_pipeline(slow_link, counts, 2048, 1408, "swiglu", 2)
    assert plan.chunks > 1 and plan.predicted_s < plan.serial_s
    no_link_cost = profile(grouped_tflops=400.0, dense_tflops=200.0, a2a_gbps=1e6, a2a_latency_s=30e-6)
    assert plan_pipeline(no_link_cost, counts, 2048, 1408, "swiglu", 2).chunks == 1
    high_latency = profile(grouped_tflops=400.0, dense_tflops=200.0, a2a_gbps=100.0, a2a_latency_s=5e-3)
    assert plan_pipeline(high_latency, counts, 2048, 1408, "swiglu", 2).chunks < plan.chunks


def test_expected_counts_follow_the_previous_routing():
    prev = np.zeros((2, 2, 2))
    prev[:, 0, 0] = 10  # everything went to rank 0's first expert
    c = expected_counts([8, 4], 2, 2, 4, prev)
    assert c.shape == (2, 4, 2, 2)
    assert c[:, :, 0, 0].sum(axis=1).tolist() == [16.0, 8.0] and c[:, :, 1].sum() == 0


def test_fit_recovers_the_coefficients_of_synthetic_measurements():
    true = profile()
    rng = np.random.default_rng(0)
    m = Measurements(device="synthetic", dtype="float32", d_model=D, d_expert=F, activation="swiglu", world_size=2)
    for _ in range(12):
        loads = rng.integers(0, 600, size=8).tolist()
        m.grouped.append(KernelSample(loads, kernel_seconds(true, "grouped", loads, D, F)))
        m.dense.append(KernelSample(loads, kernel_seconds(true, "dense", loads, D, F)))
    for nbytes in (1e5, 1e6, 1e7, 1e8):
        m.copy.append(LinkSample(nbytes, true.copy.seconds(nbytes)))
        m.all_to_all.append(LinkSample(nbytes, true.all_to_all.seconds(nbytes)))
    fit = fit_profile(m)
    assert fit.grouped.s_per_flop == pytest.approx(true.grouped.s_per_flop, rel=1e-6)
    # dense: the intercept and the per-expert term are collinear at a fixed expert count; their sum is fitted
    assert fit.dense.intercept_s + 8 * fit.dense.per_expert_s == pytest.approx(true.dense.intercept_s, rel=1e-6)
    assert fit.all_to_all.latency_s == pytest.approx(true.all_to_all.latency_s, rel=1e-6)
    assert max(fit.fit_error.values()) < 1e-6


def test_fit_refuses_too_few_or_flat_measurements():
    m = Measurements(
        device="x", dtype="float32", d_model=D, d_expert=F, activation="swiglu", grouped=[KernelSample([1, 2], 1e-3)]
    )
    with pytest.raises(ProfileError, match="at least 3"):
        fit_profile(m)
    m.grouped = m.dense = [KernelSample([n, n], 1e-3) for n in (1, 10, 100)]
    with pytest.raises(ProfileError, match="do not grow"):
        fit_profile(m)


def test_profile_round_trips_and_bad_files_are_clear_errors(tmp_path):
    p = profile()
    path = p.save(tmp_path / "p.json")
    assert DeviceProfile.load(path) == p
    data = json.loads(path.read_text())
    (tmp_path / "v.json").write_text(json.dumps(dict(data, format_version=99)))
    with pytest.raises(ProfileError, match="format_version 99"):
        DeviceProfile.load(tmp_path / "v.json")
    (tmp_path / "neg.json").write_text(json.dumps(dict(data, copy={"latency_s": -1.0, "s_per_byte": 1e-9})))
    with pytest.raises(ProfileError, match="copy.latency_s"):
        DeviceProfile.load(tmp_path / "neg.json")
    with pytest.raises(ProfileError, match="not found"):
        DeviceProfile.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProfileError, match="not valid JSON"):
        DeviceProfile.load(tmp_path / "bad.json")
