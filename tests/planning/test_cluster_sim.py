"""Cluster simulator: calibration from JSON, link model, and LocMoE vs GShard at 16 x 8."""

import json

import pytest

from locmoe.planning.cluster_sim import Calibration, MoEModel, RoutingStats, System, layer_times, step_time
from locmoe.planning.errors import PlanningError
from locmoe.planning.router_stats import project_routers, reference_stats


def test_link_fit_reproduces_the_measured_curve():
    cal = Calibration()
    for mb, gbps in zip(cal.a2a_sizes_mb, cal.a2a_gbps):
        t = cal.intra_time(mb * 1e6)
        # two-parameter fit through three measured points: within 25 % of each (the 1 MB point is the
        # one a straight alpha-beta line misses most)
        assert t == pytest.approx(mb * 1e6 / (gbps * 1e9), rel=0.25)


def test_calibration_json_replaces_defaults(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"nic_gbps": 25.0, "a2a_sizes_mb": [1, 64], "a2a_gbps": [30, 300]}))
    cal = Calibration.from_json(path)
    assert cal.nic_gbps == 25.0 and cal.a2a_sizes_mb == (1, 64) and cal.dense_tflops == 760.0
    path.write_text(json.dumps({"nic_gbs": 25.0}))
    with pytest.raises(PlanningError, match=r"unknown fields \['nic_gbs'\]"):
        Calibration.from_json(path)
    with pytest.raises(PlanningError, match="not found"):
        Calibration.from_json(tmp_path / "none.json")


def test_fewer_cross_node_copies_mean_less_communication():
    model, cal = MoEModel(), Calibration()
    far = RoutingStats(0.01, 0.05, 0.94)
    near = RoutingStats(0.1, 0.5, 0.4)
    for dispatch in ("flat", "hierarchical"):
        assert (
            layer_times(model, System("a", near, dispatch), cal, 16, 8)["all_to_all"]
            < layer_times(model, System("b", far, dispatch), cal, 16, 8)["all_to_all"]
        )
    with pytest.raises(PlanningError, match="dispatch 'ring'; allowed: flat, hierarchical"):
        layer_times(model, System("c", near, "ring"), cal, 16, 8)


def test_overlap_never_slows_a_step():
    model, cal, s = MoEModel(), Calibration(), RoutingStats(0.1, 0.5, 0.4)
    plain = step_time(model, System("a", s), cal, 16, 8)["step_ms"]
    assert step_time(model, System("a", s, overlap_chunks=4), cal, 16, 8)["step_ms"] < plain


def test_reference_stats_are_deterministic_and_locmoe_stays_closer():
    loc = reference_stats("locmoe", 4, 4, 32, seed=0)
    assert loc == reference_stats("locmoe", 4, 4, 32, seed=0)
    gs = reference_stats("gshard", 4, 4, 32, seed=0)
    assert loc.cross_node < gs.cross_node
    assert loc.on_rank + loc.in_node + loc.cross_node == pytest.approx(1.0)


def test_locmoe_projects_faster_than_gshard_at_16x8():
    rows = {r["system"]: r for r in project_routers(MoEModel(), Calibration(), 16, 8, seed=0)}
    assert rows["locmoe"]["step_ms"] < rows["gshard"]["step_ms"]
    assert rows["gshard"]["vs_gshard"] == 1.0 and rows["switch"]["k"] == 1


@pytest.mark.parametrize(
    "body", ['{"a2a_gbps": 5}', '{"nic_gbps": "fast"}', '{"dense_tflops": -1}', '{"a2a_sizes_mb": []}']
)
def test_a_calibration_of_the_wrong_types_is_one_clear_error(tmp_path, body):
    path = tmp_path / "cal.json"
    path.write_text(body)
    with pytest.raises(PlanningError, match="must be"):
        Calibration.from_json(path)
