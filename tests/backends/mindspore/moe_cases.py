"""Shared by the MindSpore MoE tests, their msrun worker and the conformance suite: layer configs, global
weights, batches, and the single-process (all experts local) reference run.

The sizes, ``job`` and ``CASES`` mirror ``tests/backends/torch/moe_cases.py`` exactly (that module imports
torch, which the msrun workers should not pay for); ``tests/conformance`` checks that the two lists agree.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor

from backends.mindspore.collectives import Group
from backends.mindspore.distributed import ExpertParallel
from backends.mindspore.moe_layer import MoELayer
from locmoe.config import load_config
from locmoe.topology import ExpertPlacement, Topology

D, E, F, V = 32, 8, 16, 256
TOKENS_PER_RANK = 16
TOPOLOGY = Topology(2, 2)


def job(kind="locmoe", mode="factor", dispatch="hierarchical", chunks=1, placement="contiguous", extra=()):
    return load_config(overrides=[
        f"model.d_model={D}", "model.n_heads=2", f"moe.num_experts={E}", f"moe.d_expert={F}",
        f"moe.router.kind={kind}", f"moe.capacity.mode={mode}", "moe.capacity.factor=1.0",
        f"moe.overlap_chunks={chunks}", f"parallel.dispatch={dispatch}", f"parallel.placement={placement}",
        f"parallel.nodes={TOPOLOGY.num_nodes}", f"parallel.devices_per_node={TOPOLOGY.devices_per_node}",
        "parallel.backend=mindspore", *extra])


CASES = [
    *[dict(kind="locmoe", mode=m) for m in ("factor", "dropless")],
    dict(kind="locmoe", mode="bound"),
    dict(kind="locmoe", mode="bound", extra=("moe.capacity.bound_rule=quantile",)),
    *[dict(kind=k, mode=m) for k in ("gshard", "switch") for m in ("factor", "dropless", "bound")],
    *[dict(kind="hash", mode=m) for m in ("factor", "dropless")],
    dict(kind="expert_choice", mode="factor"),
    dict(kind="locmoe", mode="factor", placement="round_robin"),
    dict(kind="gshard", mode="factor", extra=("moe.activation=gelu", "moe.domains.num_domains=2")),
]
CASES = [dict(c, dispatch=s) for c in CASES for s in ("hierarchical", "flat")] + [
    dict(kind="locmoe", mode="factor", chunks=2), dict(kind="gshard", mode="dropless", chunks=3, dispatch="flat")]


def case(**c) -> dict:
    """A case with every key filled in."""
    return {"dispatch": "hierarchical", "chunks": 1, "placement": "contiguous", "extra": (), **c}


CASES = [case(**c) for c in CASES]


def case_name(c: dict) -> str:
    extra = ",".join(c.get("extra", ()))
    return f"{c['kind']}-{c['mode']}-{c['dispatch']}-{c['placement']}-c{c['chunks']}" + (f"-{extra}" if extra else "")


def global_weights(cfg, seed=0) -> dict:
    """The same numbers as the torch test's weights (numpy generator, same draws)."""
    rng = np.random.default_rng(seed)
    w = {"w1": rng.standard_normal((E, D, F)) * 0.2, "w2": rng.standard_normal((E, F, D)) * 0.2,
         "gate": rng.standard_normal((D, E)) * 0.4}
    if cfg.moe.activation == "swiglu":
        w["w3"] = rng.standard_normal((E, D, F)) * 0.2
    return {k: v.astype(np.float32) for k, v in w.items()}


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
    return (rng.standard_normal((T, D)).astype(np.float32), rng.integers(0, V, T),
            rng.integers(0, 2, T), rng.standard_normal((T, D)).astype(np.float32))


def emulated_ep(cfg) -> ExpertParallel:
    one = Group(None, (0,), (0,), 0)
    placement = ExpertPlacement.from_config(cfg.parallel, E, TOPOLOGY)
    return ExpertParallel(TOPOLOGY, placement, 0, True, one, one, one, cfg.parallel.dispatch)


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
    cfg = job(**c)
    layer = MoELayer(cfg.moe, D, V, emulated_ep(cfg))
    w = global_weights(cfg, seed_w)
    load_weights(layer, w)
    x, ids, dom, g = global_batch(seed_x)
    y, gx, m, grads = run_layer(layer, x, ids, dom, g, 1)
    return cfg, layer, w, (x, ids, dom, g), y, gx, grads, m
