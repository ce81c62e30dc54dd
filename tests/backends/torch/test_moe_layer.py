"""The MoE layer in one process: outputs against the numpy reference, gradients against finite differences of
the numpy reference (float64), grouped GEMM against the loop, and the clear errors on bad input."""

import pytest
import torch

from backends.torch.collectives import Group
from backends.torch.distributed import ExpertParallel
from backends.torch.experts import GroupedExperts
from backends.torch.moe_layer import MoELayer
from tests.backends import shared_moe_checks as checks
from tests.backends.torch import moe_cases as mc

# outputs against the float64 numpy reference (1e-5 absolute; outputs are O(0.1)) and gradients along x
# and w1 against its finite differences (1e-4 relative)
(
    test_output_equals_numpy_reference,
    test_gradients_match_finite_differences_of_the_reference,
) = checks.one_process_reference_tests(mc, with_gate=False)


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


def test_emulated_token_count_must_split_over_ranks():
    with pytest.raises(ValueError, match="one process emulating 4 ranks needs a token count divisible by 4, got 6"):
        layer_for()(torch.randn(6, 32))


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


test_experts_not_divisible_by_ep_size, test_topology_that_does_not_match_the_launcher = checks.config_error_tests(
    "torchrun"
)


def test_group_of_one():
    one = checks.assert_one_process_holds_every_expert(Group, ExpertParallel)
    assert one.size == 1
