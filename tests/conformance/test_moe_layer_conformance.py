"""Cross-backend conformance of the MoE layer: numpy reference, torch and MindSpore on the same inputs and
weights, for every router and capacity mode, in one process emulating 2 nodes x 2 ranks.

Each test runs for every pair of backends. Tolerances, and why (largest differences seen in brackets):
- routing decisions (expert of every copy, kept/dropped): exact. The tie rules are part of the method.
- outputs y (|y| up to ~5): 1e-5 absolute. numpy is float64 on the same fp32 inputs; the frameworks run
  fp32 through a softmax and two chained matmuls, d=32, f=16 [1.7e-6].
- L_aux (~1.3) and L_loc (~2.5): 2e-6 absolute; fp32 means of 64 per-token terms [5e-7].
- gradients of F = Σ y·g + α·L_aux + μ·L_loc, torch vs MindSpore: 5e-5 absolute on every element of dF/dx,
  dF/dw1, dF/dw2, dF/dw3 and dF/dgate, whose elements reach ~33 (fp32 sums over 64 tokens, different
  kernels) [1.5e-5 on an element of ~20, i.e. 6e-7 of the largest].
- gradients vs numpy, which has none: directional derivatives along fixed random directions against central
  differences (step 1e-6, routing fixed under the step) of the float64 reference: 2e-4 relative. The fp32
  gradients are summed over up to 4k elements and the x direction partly cancels [5.2e-5 for x, 2.6e-6
  for the weights]; a wrong gradient is off by O(1).
- router state after the call (angle / paper δ state of mode bound, the loss-free selection bias): 1e-7
  absolute, NaN where the reference has NaN (an expert not seen yet). The angles are float64 in every backend;
  the bias is float32 state in the frameworks (one update of γ = 0.01 on a bias of ~0.05).
"""

import itertools

import numpy as np
import pytest

from tests.backends.mindspore import moe_cases as ms_cases
from tests.conformance import runners

PAIRS = list(itertools.combinations(runners.BACKENDS, 2))
CASE_IDS = [ms_cases.case_name(c) for c in runners.CASES]


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}~{p[1]}")
def pair(request):
    return request.param


@pytest.fixture(params=CASE_IDS)
def case(request):
    return request.param


def results(pair, case):
    return runners.run(pair[0], case), runners.run(pair[1], case)


def test_routing_decisions_are_identical(pair, case):
    a, b = results(pair, case)
    np.testing.assert_array_equal(a.expert, b.expert)
    np.testing.assert_array_equal(a.kept, b.kept)


def test_outputs_agree(pair, case):
    a, b = results(pair, case)
    np.testing.assert_allclose(a.y, b.y, atol=1e-5, rtol=0)


def test_losses_agree(pair, case):
    a, b = results(pair, case)
    assert a.aux_loss == pytest.approx(b.aux_loss, abs=2e-6)
    assert a.locality_loss == pytest.approx(b.locality_loss, abs=2e-6)


def test_gradients_agree(pair, case):
    a, b = results(pair, case)
    if a.grads is not None and b.grads is not None:
        assert sorted(a.grads) == sorted(b.grads)
        for name in a.grads:
            np.testing.assert_allclose(a.grads[name], b.grads[name], atol=5e-5, rtol=0, err_msg=name)
    spec = next(c for c in runners.CASES if ms_cases.case_name(c) == case)
    for name, v in runners.directions(spec).items():
        assert a.derivative(name, v) == pytest.approx(b.derivative(name, v), rel=2e-4), name


def test_router_state_agrees(pair, case):
    a, b = results(pair, case)
    assert sorted(a.state) == sorted(b.state)
    for name in a.state:
        np.testing.assert_array_equal(np.isnan(a.state[name]), np.isnan(b.state[name]), err_msg=name)
        np.testing.assert_allclose(a.state[name], b.state[name], atol=1e-7, rtol=0, equal_nan=True, err_msg=name)


def _bound_rule(c: dict) -> str:
    rules = [x.split("=")[1] for x in c["extra"] if x.startswith("moe.capacity.bound_rule=")]
    return rules[0] if rules else "cone"


def test_every_router_and_capacity_mode_is_covered():
    """Every router with every capacity mode its config allows (hash has no gate to bound; expert choice
    only takes a factor), and some cases really drop copies, so kept/dropped is compared meaningfully."""
    seen = {(c["kind"], c["mode"], _bound_rule(c)) for c in runners.CASES}
    for kind in ("locmoe", "gshard", "switch"):
        assert {
            (kind, m, r)
            for m, r in [("factor", "cone"), ("dropless", "cone"), ("bound", "cone"), ("bound", "quantile")]
        } <= seen
    assert {("hash", "factor", "cone"), ("hash", "dropless", "cone"), ("expert_choice", "factor", "cone")} <= seen
    assert sum(int((~runners.run("numpy", name).kept).sum()) for name in CASE_IDS) > 0


def test_every_issue14_option_is_covered():
    """Each new router option appears in a case, and the paper bound with a fixed δ really drops copies."""
    extras = " ".join(x for c in runners.CASES for x in c["extra"])
    for option in (
        "gate_activation=relu",
        "gate_bias=true",
        "locality_loss=batch",
        "balance_counts=gate",
        "scoring=sigmoid",
        "bias_update_rate",
        "node_limit=1",
        "node_score=top2_sum",
        "z_loss_coef",
        "bound_rule=paper",
        "paper_delta",
        "paper_form=exp",
        "paper_schedule=ema",
    ):
        assert option in extras, option
    fixed = next(n for n, c in zip(CASE_IDS, runners.CASES) if "moe.capacity.paper_delta=0.05" in c["extra"])
    assert (~runners.run("numpy", fixed).kept).sum() > 0


def test_both_backends_build_the_same_layer_for_each_case():
    """Both backends' tests take their cases from ``tests/moe_cases_common.py``; each case's config must
    differ only in the backend."""
    from tests.backends.torch import moe_cases as torch_cases

    for c in ms_cases.CASES:
        a, b = ms_cases.job(**c), torch_cases.job(**c)
        assert (a.parallel.backend, b.parallel.backend) == ("mindspore", "torch")
        assert a.moe == b.moe and a.model == b.model


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("locmoe", ()),
        ("gshard", ()),
        ("hash", ()),
        ("expert_choice", ()),
        ("locmoe", runners.PAPER),
        ("gshard", ("moe.router.bias_update_rate=0.001", "moe.router.gate_bias=true")),
    ],
)
def test_parameter_names_and_shapes_match_across_frameworks(kind, extra):
    """A checkpoint converts by name: torch's state_dict and MindSpore's parameters hold the same entries,
    which are ``locmoe.model_spec``'s (ε and the selection bias included)."""
    from backends.mindspore.moe_layer import MoELayer as MsLayer
    from backends.torch.moe_layer import MoELayer as TorchLayer
    from tests.backends.torch import moe_cases as torch_cases

    cfg = ms_cases.job(kind=kind, extra=extra)
    torch_names = {
        n: tuple(t.shape)
        for n, t in TorchLayer(cfg.moe, ms_cases.D, ms_cases.V, torch_cases.emulated_ep(cfg)).state_dict().items()
    }
    ms_names = {
        n: tuple(p.shape)
        for n, p in MsLayer(cfg.moe, ms_cases.D, ms_cases.V, ms_cases.emulated_ep(cfg)).parameters_and_names()
    }
    assert ms_names == torch_names
    r = cfg.moe.router
    assert ("router.gate_bias" in torch_names) == (r.gate_bias and kind != "hash")
    assert ("router.selection_bias" in torch_names) == (r.bias_update_rate > 0)
