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
from locmoe.routing import RouterState, route
from tests.backends.mindspore import moe_cases as mc

BACKENDS = ("numpy", "torch", "mindspore")
# The papers' LocMoE (configs/routers/locmoe_paper.yaml, written out) and today's baselines (issue 14)
PAPER = (
    "moe.router.top_k=1",
    "moe.router.gate_activation=relu",
    "moe.router.gate_bias=true",
    "moe.router.rho=1.0",
    "moe.router.balance_counts=gate",
    "moe.router.locality_loss=batch",
    "moe.capacity.bound_rule=paper",
)
OPTION_CASES = [
    ("locmoe", "bound", PAPER),  # δ measured on the batch
    ("locmoe", "bound", (*PAPER, "moe.capacity.paper_delta=0.05", "moe.capacity.paper_form=exp")),  # drops
    (
        "locmoe",
        "factor",
        (
            "moe.router.rho=0.3",
            "moe.router.balance_counts=gate",
            "moe.router.locality_loss=batch",
            "moe.router.gate_bias=true",
        ),
    ),
    (
        "gshard",
        "factor",
        ("moe.router.scoring=sigmoid", "moe.router.bias_update_rate=0.01", "moe.router.aux_loss_coef=0.0"),
    ),  # DeepSeek-V3 loss-free
    (
        "gshard",
        "factor",
        ("moe.router.node_limit=1", "moe.router.node_score=top2_sum", "moe.router.bias_update_rate=0.01"),
    ),
    ("gshard", "dropless", ("moe.router.node_limit=1", "moe.domains.num_domains=2")),
    (
        "switch",
        "factor",
        ("moe.router.z_loss_coef=0.01", "moe.router.gate_activation=relu", "moe.router.gate_bias=true"),
    ),
    ("gshard", "bound", ("moe.capacity.bound_rule=paper", "moe.capacity.paper_schedule=ema")),  # learned gate
]
CASES = [
    mc.case(kind=k, mode=m, dispatch="flat", extra=x)
    for k, m, x in [
        *[(k, m, ()) for k in ("locmoe", "gshard", "switch") for m in ("factor", "dropless", "bound")],
        *[(k, "bound", ("moe.capacity.bound_rule=quantile",)) for k in ("locmoe", "gshard", "switch")],
        ("hash", "factor", ()),
        ("hash", "dropless", ()),
        ("expert_choice", "factor", ()),
        *OPTION_CASES,
    ]
]
GRAD_NAMES = ("x", "w1", "w2", "gate", "gate_bias")  # the directions numpy differentiates along
STATE_NAMES = ("angle_ema", "selection_bias")  # router state compared after the (training) call


@dataclass
class Result:
    expert: np.ndarray  # [C] expert of every copy (token-major)
    kept: np.ndarray  # [C] admitted or dropped
    y: np.ndarray  # [T, d]
    aux_loss: float  # L_aux
    locality_loss: float  # L_loc
    grads: Optional[dict]  # name -> dF/dname (frameworks), None for numpy
    derivative: Callable[[str, np.ndarray], float]  # dF along a direction for "x", "w1", "w2", "gate", ...
    state: dict  # router state after the call (STATE_NAMES the case has)


def inputs(case: dict):
    cfg = mc.job(**case)
    return cfg, {**mc.global_weights(cfg), **router_weights(cfg)}, mc.global_batch()


def router_weights(cfg) -> dict:
    """Non-zero starting values of the issue-14 router tensors, so that they matter in one call: ε (learned)
    and the loss-free selection bias (state). Their absence means the option is off."""
    rng = np.random.default_rng(11)
    w = {}
    if cfg.moe.router.gate_bias:
        w["gate_bias"] = (rng.standard_normal(mc.E) * 0.3).astype(np.float32)
    if cfg.moe.router.bias_update_rate > 0:
        w["selection_bias"] = (rng.standard_normal(mc.E) * 0.05).astype(np.float32)
    return w


def directions(case: dict) -> dict:
    """Fixed random directions, one per differentiated input, shaped like it."""
    cfg, w, (x, *_) = inputs(case)
    rng = np.random.default_rng(7)
    shapes = {"x": x.shape, "w1": w["w1"].shape, "w2": w["w2"].shape, "gate": w["gate"].shape, "gate_bias": (mc.E,)}
    return {
        n: rng.standard_normal(shapes[n])
        for n in GRAD_NAMES
        if (n != "gate" or has_gate(cfg)) and (n != "gate_bias" or "gate_bias" in w)
    }


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

    state = RouterState(selection_bias=w["selection_bias"].astype(np.float64) if "selection_bias" in w else None)
    eps0 = w.get("gate_bias", np.zeros(mc.E, np.float32))

    def routed(xv, gate, eps):
        return route(
            xv,
            cfg.moe,
            placement,
            ranks,
            gate_weight=gate if gated else None,
            gate_bias=eps,
            token_ids=ids,
            domain=domain,
            state=state,
        )

    def objective(x=x.astype(np.float64), w1=w["w1"], w2=w["w2"], gate=w["gate"], gate_bias=eps0):  # noqa: B008
        r = routed(x, np.asarray(gate, np.float64), np.asarray(gate_bias, np.float64))
        y = moe_forward(
            x,
            r.plan,
            np.asarray(w1, np.float64),
            np.asarray(w2, np.float64),
            None if "w3" not in w else w["w3"].astype(np.float64),
            cfg.moe.activation,
        )
        rc = cfg.moe.router
        r_loc = rc.locality_loss_coef if rc.kind == "locmoe" else 0.0
        return float(
            (y * g).sum() + rc.aux_loss_coef * r.aux_loss + r_loc * r.locality_loss + rc.z_loss_coef * r.z_loss
        ), (r, y)

    decided = routed(x, w["gate"], eps0)  # decisions on the fp32 inputs the frameworks see
    _, (exact, y) = objective()
    if not (
        np.array_equal(exact.plan.expert, decided.plan.expert) and np.array_equal(exact.plan.kept, decided.plan.kept)
    ):
        raise AssertionError(
            f"{mc.case_name(case)}: float64 and float32 inputs route differently; pick a batch without near-ties"
        )
    base = {"x": x.astype(np.float64), "w1": w["w1"], "w2": w["w2"], "gate": w["gate"], "gate_bias": eps0}

    def derivative(name: str, v: np.ndarray, eps: float = 1e-6) -> float:
        at = lambda s: objective(**{name: base[name].astype(np.float64) + s * eps * v})[0]  # noqa: E731
        return (at(1.0) - at(-1.0)) / (2 * eps)

    st = {"angle_ema": decided.state.angle_ema, "selection_bias": decided.state.selection_bias}
    return Result(
        decided.plan.expert,
        decided.plan.kept,
        y,
        exact.aux_loss,
        exact.locality_loss,
        None,
        derivative,
        {
            n: (np.full(mc.E, np.nan) if n == "angle_ema" and v is None else v)
            for n, v in st.items()
            if n in case_state_names(cfg)
        },
    )


def case_state_names(cfg) -> tuple:
    """The router state a case carries: the angle state of mode bound, the loss-free bias."""
    names = ["angle_ema"] if cfg.moe.capacity.mode == "bound" else []
    return tuple(names + (["selection_bias"] if cfg.moe.router.bias_update_rate > 0 else []))


# ----------------------------------------------------------------------------- frameworks


def _framework_result(expert, kept, y, aux, loc, grads, state) -> Result:
    return Result(expert, kept, y, aux, loc, grads, lambda name, v: float((grads[name] * v).sum()), state)


def run_torch(case: dict) -> Result:
    import torch

    from backends.torch.moe_layer import MoELayer
    from tests.backends.torch import moe_cases as tc

    cfg, w, (x, ids, dom, g) = inputs(case)
    layer = MoELayer(cfg.moe, mc.D, mc.V, tc.emulated_ep(cfg))
    tc.load_weights(layer, w)
    with torch.no_grad():
        for name in ("gate_bias", "selection_bias"):
            if name in w:
                getattr(layer.router, name).copy_(torch.from_numpy(w[name]))
    t = torch.from_numpy
    y, gx, m = tc.run_layer(layer, t(x), t(ids), t(dom), t(g), 1)
    grads = {"x": gx.numpy(), "w1": layer.experts.w1.grad.numpy(), "w2": layer.experts.w2.grad.numpy()}
    if layer.experts.w3 is not None:
        grads["w3"] = layer.experts.w3.grad.numpy()
    if layer.router.gate_weight is not None:
        grads["gate"] = layer.router.gate_weight.grad.numpy()
    if layer.router.gate_bias is not None:
        grads["gate_bias"] = layer.router.gate_bias.grad.numpy()
    state = {n: getattr(layer.router, n).detach().double().numpy() for n in case_state_names(cfg)}
    return _framework_result(
        m.expert.numpy(), m.kept.numpy(), y.numpy(), float(m.aux_loss), float(m.locality_loss), grads, state
    )


def run_mindspore(case: dict) -> Result:
    from backends.mindspore.distributed import setup_runtime
    from backends.mindspore.moe_layer import MoELayer

    setup_runtime("CPU")
    cfg, w, (x, ids, dom, g) = inputs(case)
    from mindspore import Tensor

    layer = MoELayer(cfg.moe, mc.D, mc.V, mc.emulated_ep(cfg))
    mc.load_weights(layer, w)
    for name in ("gate_bias", "selection_bias"):
        if name in w:
            getattr(layer.router, name).set_data(Tensor(w[name]))
    layer.set_train(True)  # training: the router state moves
    y, gx, m, named = mc.run_layer(layer, x, ids, dom, g, 1)
    grads = {"x": gx, **{n.split(".")[-1]: v for n, v in named.items()}}
    grads["gate"] = grads.pop("gate_weight", None)
    grads = {k: v for k, v in grads.items() if v is not None}
    state = {n: getattr(layer.router, n).asnumpy().astype(np.float64) for n in case_state_names(cfg)}
    return _framework_result(
        m.expert.asnumpy(),
        m.kept.asnumpy(),
        y,
        float(m.aux_loss.asnumpy()),
        float(m.locality_loss.asnumpy()),
        grads,
        state,
    )
