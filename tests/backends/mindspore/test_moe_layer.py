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
from locmoe.experts_reference import expert_ffn
from locmoe.parallel.topology import LaunchEnv
from tests.backends import shared_moe_checks as checks
from tests.backends.mindspore import moe_cases as mc

setup_runtime("CPU")


# outputs against the float64 numpy reference (1e-5 absolute; outputs reach ~5, 1.4e-6 seen) and gradients
# along x, w1 and the learned gate against its finite differences (1e-4 relative)
(
    test_output_equals_numpy_reference,
    test_gradients_match_finite_differences_of_the_reference,
) = checks.one_process_reference_tests(mc, with_gate=True)


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


test_experts_not_divisible_by_ep_size, test_topology_that_does_not_match_the_launcher = checks.config_error_tests(
    "msrun"
)


def test_group_of_one():
    one = checks.assert_one_process_holds_every_expert(Group, ExpertParallel)
    assert one.size == 1 and one.my_world_rank == 0
