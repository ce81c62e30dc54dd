"""The MoE layer's node preference (sequence placement's signal) against the numpy reference router: the
reference's probabilities summed over each node's experts."""

import numpy as np
import pytest
import torch

from locmoe.routing import route
from tests.backends.torch import moe_cases as mc


@pytest.mark.parametrize(
    "case",
    [
        mc.case(kind="locmoe", mode="factor"),
        mc.case(kind="gshard", mode="factor", extra=("moe.domains.num_domains=2",)),
        mc.case(kind="gshard", mode="factor", extra=("moe.router.scoring=sigmoid",)),
        mc.case(kind="locmoe", mode="factor", extra=("moe.router.gate_activation=relu", "moe.router.gate_bias=true")),
    ],
    ids=mc.case_name,
)
def test_node_preference_equals_the_reference_probabilities_per_node(case):
    """fp32 layer vs float64 reference: 1e-6 absolute (probabilities are O(0.1)); rows sum to 1."""
    cfg, layer, w, (x, ids, dom, _), *_ = mc.single_process_reference(case)
    domains = cfg.moe.domains.num_domains > 1
    with torch.no_grad():
        pref = layer.node_preference(x, dom if domains else None).numpy()
    ep = mc.emulated_ep(cfg)
    ref = route(
        x.numpy().astype(np.float64),
        cfg.moe,
        ep.placement,
        np.repeat(np.arange(4), len(x) // 4),
        gate_weight=w["gate"].astype(np.float64) if cfg.moe.router.gate == "dense" else None,
        gate_bias=None
        if layer.router.gate_bias is None
        else layer.router.gate_bias.detach().numpy().astype(np.float64),
        token_ids=ids.numpy(),
        domain=dom.numpy() if domains else None,
    )
    np.testing.assert_allclose(pref, ref.probs @ ep.placement.node_mask().T, atol=1e-6, rtol=0)
    np.testing.assert_allclose(pref.sum(axis=1), 1.0, atol=1e-6)
