"""The MindSpore MoE layer in one process: outputs against the numpy reference, gradients against finite
differences of the numpy reference (float64), the expert loop against the reference FFN, parameter names,
and the clear errors on bad input."""

import numpy as np
import pytest
from mindspore import Tensor

from backends.mindspore.collectives import Group
from backends.mindspore.distributed import ExpertParallel, init_distributed, resolve_device, setup_runtime
from backends.mindspore.experts import GroupedExperts
from backends.mindspore.moe_layer import MoELayer
from locmoe.config import ConfigError, ParallelConfig
from locmoe.experts_reference import expert_ffn, moe_forward
from locmoe.parallel.topology import ExpertPlacement, LaunchEnv, Topology, layout_from_config
from locmoe.routing import route
from tests.backends.mindspore import moe_cases as mc

setup_runtime("CPU")


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
    """fp32 layer vs float64 reference on the same fp32 inputs: 1e-5 absolute (outputs reach ~5; 1.4e-6 seen)."""
    cfg, layer, w, (x, ids, dom, g), y, *_ = mc.single_process_reference(case)
    y_ref, plan = reference_output(cfg, w, x.astype(np.float64), ids, dom)
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
    """Directional derivatives of f = Σ y·g along random directions in x, w1 and the gate, central
    differences on the float64 reference (step 1e-6: routing stays fixed); tolerance 1e-4 relative."""
    cfg, layer, w, (x, ids, dom, g), y, gx, grads, _ = mc.single_process_reference(case)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    rng = np.random.default_rng(0)

    def f(xv, **ww):
        return float((reference_output(cfg, dict(w, **ww), xv, ids, dom)[0] * g64).sum())

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
    _, gx_task, _, task_grads = run_task_only(cfg, w, x, ids, dom, g)
    vx = rng.standard_normal(x64.shape)
    assert float((gx_task * vx).sum()) == pytest.approx(fd(vx, x=x64), rel=1e-4)
    if cfg.moe.router.gate == "dense":
        gate = w["gate"].astype(np.float64)
        vg = rng.standard_normal(gate.shape)
        assert float((task_grads["router.gate_weight"] * vg).sum()) == pytest.approx(fd(vg, gate=gate), rel=1e-4)


def run_task_only(cfg, w, x, ids, dom, g):
    layer = MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg))
    mc.load_weights(layer, w)
    layer.aux_coef = layer.loc_coef = 0.0
    return mc.run_layer(layer, x, ids, dom, g, 1)


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_expert_loop_equals_reference_ffn(activation):
    """Each expert's slice against the float64 reference FFN: 1e-5 (O(1) outputs, fp32 matmuls)."""
    rng = np.random.default_rng(0)
    experts = GroupedExperts(4, 32, 16, activation, "loop")
    w = {
        n: (rng.standard_normal(getattr(experts, n).shape) * 0.2).astype(np.float32)
        for n in ("w1", "w2", "w3")
        if getattr(experts, n) is not None
    }
    for n, v in w.items():
        getattr(experts, n).set_data(Tensor(v))
    x = rng.standard_normal((50, 32)).astype(np.float32)
    counts = [10, 0, 25, 15]
    y = experts(Tensor(x), counts).asnumpy()
    bounds = np.cumsum([0, *counts])
    for e in range(4):
        rows = slice(bounds[e], bounds[e + 1])
        want = expert_ffn(
            x[rows].astype(np.float64), w["w1"][e], w["w2"][e], w["w3"][e] if "w3" in w else None, activation
        )
        np.testing.assert_allclose(y[rows], want, atol=1e-5)


def test_reset_parameters_draws_the_given_scales():
    experts = GroupedExperts(8, 64, 32, "swiglu", "loop")
    experts.reset_parameters(0.02, out_std=0.005)
    stds = [float(getattr(experts, n).asnumpy().std()) for n in ("w1", "w3", "w2")]
    assert stds == pytest.approx([0.02, 0.02, 0.005], rel=0.05)  # 16k draws each: ~1% sampling error


def test_grouped_gemm_is_a_clear_error_off_ascend():
    experts = GroupedExperts(2, 32, 16, "swiglu", "grouped")
    with pytest.raises(RuntimeError, match="moe.expert_impl = 'grouped', but GroupedMatmul does not run .* on CPU"):
        experts(Tensor(np.zeros((4, 32), np.float32)), [2, 2])


@pytest.mark.parametrize("kind,gate", [("locmoe", False), ("gshard", True), ("hash", False), ("expert_choice", True)])
def test_parameter_names_match_the_torch_backend(kind, gate):
    """Same names and shapes as the torch layer: checkpoints convert by name."""
    mode = "factor"
    layer = MoELayer(mc.job(kind=kind, mode=mode).moe, mc.D, mc.V, mc.emulated_ep(mc.job(kind=kind)))
    shapes = {p.name: tuple(p.shape) for p in layer.trainable_params()}
    want = {"experts.w1": (mc.E, mc.D, mc.F), "experts.w2": (mc.E, mc.F, mc.D), "experts.w3": (mc.E, mc.D, mc.F)}
    if gate:
        want["router.gate_weight"] = (mc.D, mc.E)
    assert shapes == want


def layer_for(kind="locmoe"):
    cfg = mc.job(kind=kind, mode="factor", extra=("moe.domains.num_domains=2",) if kind == "gshard" else ())
    return MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg), layer_id=3)


def test_wrong_hidden_size():
    with pytest.raises(ValueError, match=r"MoE layer 3: expected hidden size 32, got 16 \(input shape \(8, 16\)\)"):
        layer_for()(Tensor(np.zeros((8, 16), np.float32)))


def test_non_finite_activations_are_named_with_layer_and_rank():
    x = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    x[2, 5] = np.nan
    x[3, 1] = np.inf
    with pytest.raises(FloatingPointError, match="MoE layer 3 on rank 0: the input activations hold 2 non-finite"):
        layer_for()(Tensor(x))


def test_emulated_token_count_must_split_over_ranks():
    with pytest.raises(ValueError, match="one process emulating 4 ranks needs a token count divisible by 4, got 6"):
        layer_for()(Tensor(np.zeros((6, 32), np.float32)))


def test_hash_router_needs_token_ids_in_range():
    x = Tensor(np.zeros((8, 32), np.float32))
    with pytest.raises(ValueError, match="router hash: token_ids are required"):
        layer_for("hash")(x)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\) for the hash router, got \[0, 300\]"):
        layer_for("hash")(x, token_ids=Tensor(np.array([0, 1, 2, 3, 4, 5, 6, 300])))


def test_domain_ids_out_of_range():
    x = Tensor(np.zeros((8, 32), np.float32))
    with pytest.raises(ValueError, match=r"MoE layer 3: domain ids must lie in \[0, 2\) .* got \[0, 5\]"):
        layer_for("gshard")(x, domain=Tensor(np.array([0, 1, 0, 1, 5, 0, 0, 1])))


def test_experts_not_divisible_by_ep_size():
    with pytest.raises(ConfigError, match=r"moe.num_experts: 6 is not divisible by the expert-parallel size \(4\)"):
        ExpertPlacement.contiguous(6, Topology(2, 2))


def test_topology_that_does_not_match_the_launcher():
    with pytest.raises(ConfigError, match=r"2 nodes x 2 devices = 4 ranks, but the launcher started 2 \(msrun\)"):
        layout_from_config(ParallelConfig(nodes=2, devices_per_node=2), LaunchEnv(2, 0, 2, "msrun"))


def test_several_ranks_need_msrun():
    with pytest.raises(
        ConfigError, match="parallel.backend: mindspore with 4 ranks must be started by msrun, not torchrun"
    ):
        init_distributed(ParallelConfig(backend="mindspore", device="cpu"), LaunchEnv(4, 0, 4, "torchrun"))


def test_unknown_or_missing_device():
    with pytest.raises(ConfigError, match=r"parallel.device: 'tpu' is not a MindSpore device; allowed: \['auto', "):
        resolve_device("tpu")
    with pytest.raises(
        ConfigError, match="parallel.device: 'ascend' was asked for, but this MindSpore build sees no Ascend device"
    ):
        resolve_device("ascend")
    assert resolve_device("cpu") == "CPU"


def test_single_process_context_emulates_the_configured_topology():
    ctx = init_distributed(
        ParallelConfig(backend="mindspore", device="cpu", nodes=2, devices_per_node=2), LaunchEnv(1, 0, 1, "none")
    )
    assert ctx.emulated and ctx.world_size == 1 and ctx.ep.size == 1 and ctx.device == "CPU"


def test_group_of_one():
    one = Group(None, (0,), (0,), 0)
    assert one.size == 1 and one.my_world_rank == 0
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
