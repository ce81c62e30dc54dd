"""Framework-free checks both backends' MoE tests share: the numpy reference output of a case, the torchrun /
msrun workers' comparison of an expert-parallel run with the one-process run, and the assertions on their
reports. Each backend's test keeps only what is framework-specific (building tensors, calling its layer)."""

from __future__ import annotations

import numpy as np
import pytest

from locmoe.config import ConfigError, ParallelConfig
from locmoe.experts_reference import moe_forward
from locmoe.parallel.topology import ExpertPlacement, LaunchEnv, Topology, layout_from_config
from locmoe.routing import route
from tests.moe_cases_common import CASES, TOKENS_PER_RANK, TOPOLOGY, D, E, V, case, case_name
from tests.static_cases import STATIC_CASES, assert_static_equals_dynamic, dropped_fractions

TOL = 1e-5


def reference_output(cfg, w, x, ids, dom, placement):
    """The float64 numpy MoE forward of (x, ids, dom) under ``cfg`` with weights ``w``, and its plan."""
    gate = w["gate"].astype(np.float64) if cfg.moe.router.gate == "dense" else None
    plan = route(
        x,
        cfg.moe,
        placement,
        np.repeat(np.arange(4), len(x) // 4),
        gate_weight=gate,
        token_ids=ids,
        domain=dom if cfg.moe.domains.num_domains > 1 else None,
    ).plan
    to64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    return moe_forward(x, plan, to64(w["w1"]), to64(w["w2"]), to64(w.get("w3")), cfg.moe.activation), plan


# --- the one-process layer tests ------------------------------------------------------------------------

OUTPUT_CASES = [c for c in CASES if c["dispatch"] == "flat"]
GRADIENT_CASES = [
    case(kind="locmoe", mode="factor", dispatch="flat"),
    case(kind="gshard", mode="bound", dispatch="flat"),
    case(kind="switch", mode="factor", dispatch="flat"),
]


def one_process_reference_tests(mc, with_gate: bool):
    """The two one-process tests of a backend's layer against the numpy reference, for its ``moe_cases``
    module ``mc``: (test_output_equals_numpy_reference, test_gradients_match_finite_differences_of_the_reference).
    ``with_gate``: also check the learned gate's gradient."""

    @pytest.mark.parametrize("case", OUTPUT_CASES, ids=case_name)
    def test_output_equals_numpy_reference(case):
        """fp32 layer vs float64 reference on the same fp32 inputs: 1e-5 absolute."""
        cfg, layer, w, (x, ids, dom, g), y, *_ = mc.single_process_reference(case)
        x, ids, dom = (np.asarray(a) for a in (x, ids, dom))
        y_ref, plan = reference_output(cfg, w, x.astype(np.float64), ids, dom, mc.emulated_ep(cfg).placement)
        np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0)

    @pytest.mark.parametrize("case", GRADIENT_CASES, ids=case_name)
    def test_gradients_match_finite_differences_of_the_reference(case):
        """Directional derivatives of f = Σ y·g along random directions in x, w1 (and the gate), central
        differences on the float64 reference (step 1e-6: routing stays fixed); tolerance 1e-4 relative."""
        cfg, layer, w, batch, y, gx, grads, _ = mc.single_process_reference(case)
        x64, ids, dom, g64 = (np.asarray(a) for a in batch)
        x64, g64 = x64.astype(np.float64), g64.astype(np.float64)
        placement = mc.emulated_ep(cfg).placement
        rng = np.random.default_rng(0)

        def f(xv, **ww):
            return float((reference_output(cfg, dict(w, **ww), xv, ids, dom, placement)[0] * g64).sum())

        def fd(direction, **at):
            eps = 1e-6
            ((name, base),) = at.items()
            if name == "x":
                return (f(base + eps * direction) - f(base - eps * direction)) / (2 * eps)
            return (f(x64, **{name: base + eps * direction}) - f(x64, **{name: base - eps * direction})) / (2 * eps)

        w1 = w["w1"].astype(np.float64)
        vw = rng.standard_normal(w1.shape)
        assert float((grads["experts.w1"] * vw).sum()) == pytest.approx(fd(vw, w1=w1), rel=1e-4)
        # the reference is the task term only; the aux losses also depend on x and the gate, so switch them off
        task_only = mc.MoELayer(cfg.moe, D, V, mc.emulated_ep(cfg))
        mc.load_weights(task_only, w)
        task_only.aux_coef = task_only.loc_coef = 0.0
        task = mc.run_layer(task_only, *batch, 1)  # (y, dx, metrics[, parameter gradients])
        vx = rng.standard_normal(x64.shape)
        assert float((np.asarray(task[1]) * vx).sum()) == pytest.approx(fd(vx, x=x64), rel=1e-4)
        if with_gate and cfg.moe.router.gate == "dense":
            gate = w["gate"].astype(np.float64)
            vg = rng.standard_normal(gate.shape)
            assert float((task[3]["router.gate_weight"] * vg).sum()) == pytest.approx(fd(vg, gate=gate), rel=1e-4)

    return test_output_equals_numpy_reference, test_gradients_match_finite_differences_of_the_reference


def config_error_tests(launcher: str):
    """(test_experts_not_divisible_by_ep_size, test_topology_that_does_not_match_the_launcher) for a backend
    whose multi-process launcher is ``launcher``."""

    def test_experts_not_divisible_by_ep_size():
        with pytest.raises(ConfigError, match=r"moe.num_experts: 6 is not divisible by the expert-parallel size \(4\)"):
            ExpertPlacement.contiguous(6, Topology(2, 2))

    def test_topology_that_does_not_match_the_launcher():
        with pytest.raises(
            ConfigError, match=rf"2 nodes x 2 devices = 4 ranks, but the launcher started 2 \({launcher}\)"
        ):
            layout_from_config(ParallelConfig(nodes=2, devices_per_node=2), LaunchEnv(2, 0, 2, launcher))

    return test_experts_not_divisible_by_ep_size, test_topology_that_does_not_match_the_launcher


def assert_one_process_holds_every_expert(group_cls, expert_parallel_cls):
    """A backend's ``ExpertParallel`` over groups of one holds every expert and is not distributed; returns
    the group of one."""
    one = group_cls(None, (0,), (0,), 0)
    ep = expert_parallel_cls(
        topology=Topology(1, 1),
        placement=ExpertPlacement.contiguous(4, Topology(1, 1)),
        rank=0,
        group=one,
        intra=one,
        inter=one,
        scheme="flat",
    )
    assert not ep.distributed and ep.local_experts == (0, 1, 2, 3)
    return one


def static_one_process_tests(single_process_reference):
    """(test_static_equals_dynamic_in_one_process, test_the_cases_cover_drops_and_no_drops): a backend's
    ``moe.dispatch_shape: static`` against dynamic dispatch, through its ``single_process_reference``."""

    @pytest.mark.parametrize("case", STATIC_CASES, ids=case_name)
    def test_static_equals_dynamic_in_one_process(case):
        assert_static_equals_dynamic(single_process_reference, case)

    def test_the_cases_cover_drops_and_no_drops():
        dropped = dropped_fractions(single_process_reference)
        assert dropped[0] > 0 and dropped[1] == 0

    return test_static_equals_dynamic_in_one_process, test_the_cases_cover_drops_and_no_drops


# --- the distributed workers -----------------------------------------------------------------------------


def full_expert_grads(gathered: dict, placement) -> dict:
    """{name: every rank's local expert gradients, gathered along rows} -> {"grad_" + name: [E, ...] indexed
    by global expert id under ``placement``}."""
    out = {}
    for name, rows in gathered.items():
        local = rows.reshape(TOPOLOGY.world_size, -1, *rows.shape[1:])
        full = np.zeros((E, *rows.shape[1:]), dtype=np.float32)
        for rank in range(TOPOLOGY.world_size):
            full[list(placement.local_experts(rank))] = local[rank]
        out["grad_" + name] = full
    return out


def compare(mc, c, cfg, w, batch, out) -> dict:
    """Rank 0's row of a worker report: the expert-parallel run ``out`` of case ``c`` (numpy arrays, batch
    (x, ids, dom) as numpy) against ``mc.single_process_reference`` and the numpy dispatch plan."""
    x, ids, dom = batch
    _, _, _, _, y_ref, gx_ref, grads_ref, m_ref = mc.single_process_reference(c)
    res = {
        "name": case_name(c),
        "y_err": float(np.abs(out["y"] - y_ref).max()),
        "gx_err": float(np.abs(out["gx"] - gx_ref).max()),
        "summary": out["summary"],
        "ref_summary": m_ref.summary(),
    }
    for name in ("w1", "w2", "w3"):
        if "grad_" + name in out:
            res[f"g{name}_err"] = float(np.abs(out["grad_" + name] - grads_ref["experts." + name]).max())
    if "grad_gate" in out:
        res["ggate_err"] = float(np.abs(out["grad_gate"] - grads_ref["router.gate_weight"]).max())
    # routing decisions against the numpy reference (fp32 inputs, as the layer sees them)
    gate = w["gate"] if cfg.moe.router.gate == "dense" else None
    domain = dom if cfg.moe.domains.num_domains > 1 else None
    placement = mc.emulated_ep(cfg).placement
    ref = route(
        x,
        cfg.moe,
        placement,
        np.repeat(np.arange(4), TOKENS_PER_RANK),
        gate_weight=gate,
        token_ids=ids,
        domain=domain,
    )
    res["experts_equal"] = bool(np.array_equal(out["expert"], ref.plan.expert))
    res["kept_equal"] = bool(np.array_equal(out["kept"], ref.plan.kept))
    res["dropped"] = int((~ref.plan.kept).sum())
    # byte counters against the plan's prediction, per rank and per stage
    row, scheme = D * 4, c["dispatch"]
    res["traffic_ok"] = True
    for direction in ("dispatch", "combine"):
        pred = ref.plan.traffic(row, scheme, direction)
        for rank, stages in enumerate(out["stages"]):
            tag = ":combine" if direction == "combine" else ""
            names = ["flat"] if scheme == "flat" else ["stage1", "stage2"]
            got = np.sum([stages.get(n + tag, [0, 0]) for n in names], axis=0)
            if list(got) != [pred["intra_node"][rank], pred["cross_node"][rank]]:
                res["traffic_ok"] = False
                res.setdefault("traffic_mismatch", []).append(
                    [direction, rank, list(map(int, got)), int(pred["intra_node"][rank]), int(pred["cross_node"][rank])]
                )
    res["cross_bytes"] = int(out["summary"]["cross_node_bytes"])
    res["cross_bytes_measured"] = int(sum(sum(v[1] for k, v in s.items() if ":grad" not in k) for s in out["stages"]))
    res["cross_bytes_predicted"] = int(
        sum(ref.plan.traffic(row, scheme, d)["cross_node"].sum() for d in ("dispatch", "combine"))
    )
    # the backward all-to-alls send what the forward ones received: same bytes, mirrored
    res["grad_cross_bytes"] = int(sum(sum(v[1] for k, v in s.items() if ":grad" in k) for s in out["stages"]))
    return res


def report_all_cases(mc, rank: int, run_case) -> list:
    """Run every case on every rank (``run_case(c)`` -> cfg, w, numpy batch, out); rank 0 compares each."""
    report = []
    for c in CASES:
        cfg, w, batch, out = run_case(c)
        if rank == 0:
            report.append(compare(mc, c, cfg, w, batch, out))
    return report


# --- the pytest side of the distributed reports ----------------------------------------------------------


def assert_expert_parallel_equals_one_process(r: dict) -> None:
    errors = {k: v for k, v in r.items() if k.endswith("_err")}
    assert all(v <= TOL for v in errors.values()), errors
    assert r["experts_equal"] and r["kept_equal"], "routing decisions differ from the numpy reference"
    assert r["traffic_ok"], r.get("traffic_mismatch")
    assert r["cross_bytes_measured"] == r["cross_bytes_predicted"]
    assert r["summary"]["dropped_fraction"] == pytest.approx(r["ref_summary"]["dropped_fraction"])
    assert r["summary"]["cross_node_fraction"] == pytest.approx(r["ref_summary"]["cross_node_fraction"])


def assert_hierarchical_and_flat_give_the_same_bytes_across_nodes(report: dict) -> None:
    for c in CASES:
        if c["dispatch"] == "hierarchical" and c["chunks"] == 1:
            flat = report[case_name(dict(c, dispatch="flat"))]
            assert report[case_name(c)]["cross_bytes_measured"] == flat["cross_bytes_measured"]


def assert_locmoe_crosses_nodes_less_than_gshard_by_the_planned_ratio(report: dict, mode: str) -> None:
    name = lambda kind: case_name(  # noqa: E731
        next(
            c
            for c in CASES
            if c["kind"] == kind
            and c["mode"] == mode  # noqa
            and c["dispatch"] == "hierarchical"
            and not c["extra"]
        )
    )
    loc, gsh = report[name("locmoe")], report[name("gshard")]
    assert loc["cross_bytes_measured"] < gsh["cross_bytes_measured"]
    assert (
        loc["cross_bytes_measured"] / gsh["cross_bytes_measured"]
        == loc["cross_bytes_predicted"] / gsh["cross_bytes_predicted"]
    )
