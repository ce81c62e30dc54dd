"""Shared by the MindSpore MoE tests, their msrun worker and the conformance suite: layer configs, global
weights, batches, and the single-process (all experts local) reference run.

The sizes, ``CASES`` and weights are ``tests/moe_cases_common.py``'s, shared with the torch tests.
"""

from __future__ import annotations

import sys

import mindspore as ms
import numpy as np
from mindspore import Tensor

from backends.mindspore.collectives import Group
from backends.mindspore.distributed import ExpertParallel
from backends.mindspore.moe_layer import MoELayer
from tests import moe_cases_common as common
from tests.moe_cases_common import CASES, TOKENS_PER_RANK, TOPOLOGY, D, E, F, V, case, case_name, global_weights  # noqa: F401
from tests.moe_cases_common import job as _job


def job(*args, **kwargs):
    return _job(*args, backend="mindspore", **kwargs)


def load_weights(layer: MoELayer, w: dict) -> None:
    experts = list(layer.ep.local_experts)
    for name in ("w1", "w2", "w3"):
        if name in w:
            getattr(layer.experts, name).set_data(Tensor(w[name][experts]))
    if layer.router.gate_weight is not None:
        layer.router.gate_weight.set_data(Tensor(w["gate"]))


def global_batch(seed=1, ranks=TOPOLOGY.world_size):
    """(x [T, d], token ids [T], domains [T], output cotangent g [T, d]) as numpy arrays, T = all ranks' tokens."""
    rng = np.random.default_rng(seed)
    T = TOKENS_PER_RANK * ranks
    return (
        rng.standard_normal((T, D)).astype(np.float32),
        rng.integers(0, V, T),
        rng.integers(0, 2, T),
        rng.standard_normal((T, D)).astype(np.float32),
    )


def emulated_ep(cfg) -> ExpertParallel:
    return common.emulated_ep(cfg, Group, ExpertParallel)


def run_layer(layer: MoELayer, x, ids, domain, g, num_ranks: int):
    """Forward + backward of Σ y·g + aux/num_ranks.

    Returns y, dx (numpy), the metrics and {parameter name: gradient} (MindSpore returns gradients instead of
    storing them on the parameters).
    """
    domain = Tensor(domain) if layer.moe.domains.num_domains > 1 else None
    ids, g = Tensor(ids), Tensor(g)
    seen = {}

    def objective(xt):
        y, aux, m = layer(xt, token_ids=ids, domain=domain)
        seen["y"], seen["m"] = y, m
        return (y * g).sum() + aux / num_ranks

    params = layer.trainable_params()
    _, (gx, gparams) = ms.value_and_grad(objective, grad_position=0, weights=params)(Tensor(x))
    grads = {p.name: gp.asnumpy() for p, gp in zip(params, gparams)}
    return seen["y"].asnumpy(), gx.asnumpy(), seen["m"], grads


def single_process_reference(c: dict, seed_w=0, seed_x=1):
    """The same layer with every expert local, on the whole batch: the result the EP run must equal."""
    cfg, layer, w = common.build_layer(sys.modules[__name__], c, seed_w=seed_w)
    x, ids, dom, g = global_batch(seed_x)
    y, gx, m, grads = run_layer(layer, x, ids, dom, g, 1)
    return cfg, layer, w, (x, ids, dom, g), y, gx, grads, m
