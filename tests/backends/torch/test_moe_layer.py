"""The MoE layer in one process: outputs against the numpy reference, gradients against finite differences of
the numpy reference (float64), grouped GEMM against the loop, and the clear errors on bad input."""

import numpy as np
import pytest
import torch

from backends.torch.collectives import Group
from backends.torch.distributed import ExpertParallel
from backends.torch.experts import GroupedExperts
from backends.torch.moe_layer import MoELayer
from locmoe.config import ConfigError, ParallelConfig
from locmoe.experts_reference import moe_forward
from locmoe.parallel.topology import ExpertPlacement, LaunchEnv, Topology, layout_from_config
from locmoe.routing import route
from tests.backends.torch import moe_cases as mc


def reference_output(cfg, w, x, ids, dom):
    gate = w["gate"].astype(np.float64) if cfg.moe.router.gate == "dense" else None
    plan = route(
        x,
        cfg.moe,
        mc.emulated_ep(cfg).placement,
        np.repeat(np.arange(4), len(x) // 4),
        gate_weight=gate,
        token_ids=ids,
        domain=dom if cfg.moe.domains.num_domains > 1 else None,
    ).plan
    to64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    return moe_forward(x, plan, to64(w["w1"]), to64(w["w2"]), to64(w.get("w3")), cfg.moe.activation), plan


@pytest.mark.parametrize("case", [c for c in mc.CASES if c["dispatch"] == "flat"], ids=mc.case_name)
def test_output_equals_numpy_reference(case):
    """fp32 layer vs float64 reference on the same fp32 inputs: 1e-5 absolute (outputs are O(0.1))."""
    cfg, layer, w, (x, ids, dom, g), y, *_ = mc.single_process_reference(case)
    y_ref, plan = reference_output(cfg, w, x.numpy().astype(np.float64), ids.numpy(), dom.numpy())
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "case",
    [
        mc.case(kind="locmoe", mode="factor", dispatch="flat"),
        mc.case(kind="gshard", mode="bound", dispatch="flat"),
        mc.case(kind="switch", mode="factor", dispatch="flat"),
    ],
    ids=mc.case_name,
)
def test_gradients_match_finite_differences_of_the_reference(case):
    """Directional derivatives of f = Σ y·g along random directions in x and w1, central differences
    on the float64 reference (step 1e-6: routing stays fixed); tolerance 1e-4 relative to the derivative."""
    cfg, layer, w, (x, ids, dom, g), y, gx, grads, _ = mc.single_process_reference(case)
    x64, g64 = x.numpy().astype(np.float64), g.numpy().astype(np.float64)
    rng = np.random.default_rng(0)

    def f(xv, w1):
        ww = dict(w, w1=w1)
        return float((reference_output(cfg, ww, xv, ids.numpy(), dom.numpy())[0] * g64).sum())

    eps, w1 = 1e-6, w["w1"].astype(np.float64)
    vw = rng.standard_normal(w1.shape)
    fd_w = (f(x64, w1 + eps * vw) - f(x64, w1 - eps * vw)) / (2 * eps)
    assert float((grads["experts.w1"] * vw).sum()) == pytest.approx(fd_w, rel=1e-4)
    # the reference is the task term only; the aux losses also depend on x, so switch them off for dx
    task_only = MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg))
    mc.load_weights(task_only, w)
    task_only.aux_coef = task_only.loc_coef = 0.0
    _, gx_task, _ = mc.run_layer(task_only, x, ids, dom, g, 1)
    vx = rng.standard_normal(x64.shape)
    fd_x = (f(x64 + eps * vx, w1) - f(x64 - eps * vx, w1)) / (2 * eps)
    assert float((gx_task.numpy() * vx).sum()) == pytest.approx(fd_x, rel=1e-4)


def test_grouped_gemm_equals_loop():
    torch.manual_seed(0)
    a = GroupedExperts(4, 32, 16, "swiglu", "grouped")
    b = GroupedExperts(4, 32, 16, "swiglu", "loop")
    a.reset_parameters(0.2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(50, 32)
    counts = torch.tensor([10, 0, 25, 15])
    ya, yb = a(x, counts), b(x, counts)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(a.w1.grad, b.w1.grad, atol=1e-5, rtol=1e-5)


def layer_for():
    cfg = mc.job(kind="locmoe", mode="factor")
    return MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg), layer_id=3)


def test_wrong_hidden_size():
    with pytest.raises(ValueError, match=r"MoE layer 3: expected hidden size 32, got 16 \(input shape \(8, 16\)\)"):
        layer_for()(torch.randn(8, 16))


def test_non_finite_activations_are_named_with_layer_and_rank():
    x = torch.randn(8, 32)
    x[2, 5] = float("nan")
    x[3, 1] = float("inf")
    with pytest.raises(FloatingPointError, match="MoE layer 3 on rank 0: the input activations hold 2 non-finite"):
        layer_for()(x)


def test_experts_not_divisible_by_ep_size():
    with pytest.raises(ConfigError, match=r"moe.num_experts: 6 is not divisible by the expert-parallel size \(4\)"):
        ExpertPlacement.contiguous(6, Topology(2, 2))


def test_topology_that_does_not_match_the_launcher():
    with pytest.raises(ConfigError, match=r"2 nodes x 2 devices = 4 ranks, but the launcher started 2 \(torchrun\)"):
        layout_from_config(ParallelConfig(nodes=2, devices_per_node=2), LaunchEnv(2, 0, 2, "torchrun"))


def test_emulated_token_count_must_split_over_ranks():
    with pytest.raises(ValueError, match="one process emulating 4 ranks needs a token count divisible by 4, got 6"):
        layer_for()(torch.randn(6, 32))


def test_group_of_one():
    assert Group(None, (0,), (0,), 0).size == 1
    one = Group(None, (0,), (0,), 0)
    ep = ExpertParallel(
        topology=Topology(1, 1),
        placement=ExpertPlacement.contiguous(4, Topology(1, 1)),
        rank=0,
        group=one,
        intra=one,
        inter=one,
        scheme="flat",
    )
    assert not ep.distributed and ep.local_experts == (0, 1, 2, 3)


@pytest.mark.parametrize("rule", ["quantile", "cone", "paper"])
def test_capacity_state_follows_the_module_when_it_moves(rule):
    """Moving a module replaces its buffers (here float64 -> float32 -> float64): the capacity planner must
    update the router's angle average that the module holds now, not the tensor it held at construction."""
    cfg = mc.job(kind="locmoe", mode="bound", extra=[f"moe.capacity.bound_rule={rule}"])
    layer = MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg)).float().double()
    assert torch.isnan(layer.router.angle_ema).all()
    layer.train()
    layer(torch.randn(mc.TOKENS_PER_RANK * mc.TOPOLOGY.world_size, mc.D, dtype=torch.float64))
    assert not torch.isnan(layer.router.angle_ema).all()
