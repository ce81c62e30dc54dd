"""One MoE layer call per backend on the same inputs and weights, in one process emulating 2 nodes x 2.

Every runner returns a :class:`Result` for the objective F = Σ y·g + α·L_aux + μ·L_loc (μ for locmoe only):
the routing decisions, the output, the raw losses, and what each backend knows of F's gradient — torch and
MindSpore their autodiff gradients, numpy (which has none) central differences of its float64 reference
along given directions.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import numpy as np

from locmoe.experts_reference import moe_forward
from locmoe.routing import route
from tests.backends.mindspore import moe_cases as mc

BACKENDS = ("numpy", "torch", "mindspore")
CASES = [mc.case(kind=k, mode=m, dispatch="flat", extra=x) for k, m, x in [
    *[(k, m, ()) for k in ("locmoe", "gshard", "switch") for m in ("factor", "dropless", "bound")],
    *[(k, "bound", ("moe.capacity.bound_rule=quantile",)) for k in ("locmoe", "gshard", "switch")],
    ("hash", "factor", ()), ("hash", "dropless", ()), ("expert_choice", "factor", ()),
]]
GRAD_NAMES = ("x", "w1", "w2", "gate")       # the directions numpy differentiates along


@dataclass
class Result:
    expert: np.ndarray                   # [C] expert of every copy (token-major)
    kept: np.ndarray                     # [C] admitted or dropped
    y: np.ndarray                        # [T, d]
    aux_loss: float                      # L_aux
    locality_loss: float                 # L_loc
    grads: Optional[dict]                # name -> dF/dname (frameworks), None for numpy
    derivative: Callable[[str, np.ndarray], float]   # dF along a direction for "x", "w1", "w2" or "gate"


def inputs(case: dict):
    cfg = mc.job(**case)
    return cfg, mc.global_weights(cfg), mc.global_batch()


def directions(case: dict) -> dict:
    """Fixed random directions, one per differentiated input, shaped like it."""
    cfg, w, (x, *_) = inputs(case)
    rng = np.random.default_rng(7)
    shapes = {"x": x.shape, "w1": w["w1"].shape, "w2": w["w2"].shape, "gate": w["gate"].shape}
    return {n: rng.standard_normal(shapes[n]) for n in GRAD_NAMES if n != "gate" or has_gate(cfg)}


def has_gate(cfg) -> bool:
    return cfg.moe.router.gate == "dense" and cfg.moe.router.kind != "hash"


@lru_cache(maxsize=None)
def run(backend: str, name: str) -> Result:
    case = next(c for c in CASES if mc.case_name(c) == name)
    return {"numpy": run_numpy, "torch": run_torch, "mindspore": run_mindspore}[backend](case)


# ----------------------------------------------------------------------------- numpy (the reference)

def run_numpy(case: dict) -> Result:
    cfg, w, (x, ids, dom, g) = inputs(case)
    ranks = np.repeat(np.arange(mc.TOPOLOGY.world_size), mc.TOKENS_PER_RANK)
    placement = mc.emulated_ep(cfg).placement
    domain = dom if cfg.moe.domains.num_domains > 1 else None
    gated = has_gate(cfg)

    def routed(xv, gate):
        return route(xv, cfg.moe, placement, ranks, gate_weight=gate if gated else None, token_ids=ids, domain=domain)

    def objective(x=x.astype(np.float64), w1=w["w1"], w2=w["w2"], gate=w["gate"]) -> tuple[float, object]:
        r = routed(x, np.asarray(gate, np.float64))
        y = moe_forward(x, r.plan, np.asarray(w1, np.float64), np.asarray(w2, np.float64),
                        None if "w3" not in w else w["w3"].astype(np.float64), cfg.moe.activation)
        r_loc = cfg.moe.router.locality_loss_coef if cfg.moe.router.kind == "locmoe" else 0.0
        return float((y * g).sum() + cfg.moe.router.aux_loss_coef * r.aux_loss + r_loc * r.locality_loss), (r, y)

    decided = routed(x, w["gate"])                 # decisions on the fp32 inputs the frameworks see
    _, (exact, y) = objective()
    if not (np.array_equal(exact.plan.expert, decided.plan.expert) and np.array_equal(exact.plan.kept,
                                                                                     decided.plan.kept)):
        raise AssertionError(f"{mc.case_name(case)}: float64 and float32 inputs route differently; pick a batch "
                             "without near-ties")
    base = {"x": x.astype(np.float64), "w1": w["w1"], "w2": w["w2"], "gate": w["gate"]}

    def derivative(name: str, v: np.ndarray, eps: float = 1e-6) -> float:
        at = lambda s: objective(**{name: base[name].astype(np.float64) + s * eps * v})[0]  # noqa: E731
        return (at(1.0) - at(-1.0)) / (2 * eps)

    return Result(decided.plan.expert, decided.plan.kept, y, exact.aux_loss, exact.locality_loss, None, derivative)


# ----------------------------------------------------------------------------- frameworks

def _framework_result(expert, kept, y, aux, loc, grads) -> Result:
    return Result(expert, kept, y, aux, loc, grads, lambda name, v: float((grads[name] * v).sum()))


def run_torch(case: dict) -> Result:
    import torch

    from backends.torch.moe_layer import MoELayer
    from tests.backends.torch import moe_cases as tc

    cfg, w, (x, ids, dom, g) = inputs(case)
    layer = MoELayer(cfg.moe, mc.D, mc.V, tc.emulated_ep(cfg))
    tc.load_weights(layer, w)
    t = torch.from_numpy
    y, gx, m = tc.run_layer(layer, t(x), t(ids), t(dom), t(g), 1)
    grads = {"x": gx.numpy(), "w1": layer.experts.w1.grad.numpy(), "w2": layer.experts.w2.grad.numpy()}
    if layer.experts.w3 is not None:
        grads["w3"] = layer.experts.w3.grad.numpy()
    if layer.router.gate_weight is not None:
        grads["gate"] = layer.router.gate_weight.grad.numpy()
    return _framework_result(m.expert.numpy(), m.kept.numpy(), y.numpy(), float(m.aux_loss),
                             float(m.locality_loss), grads)


def run_mindspore(case: dict) -> Result:
    from backends.mindspore.distributed import setup_runtime
    from backends.mindspore.moe_layer import MoELayer

    setup_runtime("CPU")
    cfg, w, (x, ids, dom, g) = inputs(case)
    layer = MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg))
    mc.load_weights(layer, w)
    y, gx, m, named = mc.run_layer(layer, x, ids, dom, g, 1)
    grads = {"x": gx, **{n.split(".")[-1]: v for n, v in named.items()}}
    grads["gate"] = grads.pop("gate_weight", None)
    grads = {k: v for k, v in grads.items() if v is not None}
    return _framework_result(m.expert.asnumpy(), m.kept.asnumpy(), y, float(m.aux_loss.asnumpy()),
                             float(m.locality_loss.asnumpy()), grads)
