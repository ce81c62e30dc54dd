"""The MoE layer test cases both backends run (and the conformance suite compares): sizes, the layer
config of a case, the case list, and the global weights as numpy arrays. Framework-free, so an msrun worker
does not import torch and a torchrun worker does not import MindSpore."""

from __future__ import annotations

import numpy as np

from locmoe.config import load_config
from locmoe.parallel.topology import ExpertPlacement, Topology

D, E, F, V = 32, 8, 16, 256
TOKENS_PER_RANK = 16
TOPOLOGY = Topology(2, 2)


def job(
    kind="locmoe", mode="factor", dispatch="hierarchical", chunks=1, placement="contiguous", extra=(), backend="torch"
):
    return load_config(
        overrides=[
            f"model.d_model={D}",
            "model.n_heads=2",
            f"moe.num_experts={E}",
            f"moe.d_expert={F}",
            f"moe.router.kind={kind}",
            f"moe.capacity.mode={mode}",
            "moe.capacity.factor=1.0",
            f"moe.overlap_chunks={chunks}",
            f"parallel.dispatch={dispatch}",
            f"parallel.placement={placement}",
            f"parallel.nodes={TOPOLOGY.num_nodes}",
            f"parallel.devices_per_node={TOPOLOGY.devices_per_node}",
            f"parallel.backend={backend}",
            *extra,
        ]
    )


CASES = [
    *[dict(kind="locmoe", mode=m) for m in ("factor", "dropless")],
    dict(kind="locmoe", mode="bound"),
    dict(kind="locmoe", mode="bound", extra=("moe.capacity.bound_rule=quantile",)),
    *[dict(kind=k, mode=m) for k in ("gshard", "switch") for m in ("factor", "dropless", "bound")],
    *[dict(kind="hash", mode=m) for m in ("factor", "dropless")],
    dict(kind="expert_choice", mode="factor"),
    dict(kind="locmoe", mode="factor", placement="round_robin"),
    dict(kind="gshard", mode="factor", extra=("moe.activation=gelu", "moe.domains.num_domains=2")),
    # issue 14: DeepSeek-V3's loss-free, node-limited sigmoid router; the paper's LocMoE (Theorem 1 bound)
    dict(
        kind="gshard",
        mode="factor",
        extra=("moe.router.scoring=sigmoid", "moe.router.bias_update_rate=0.01", "moe.router.node_limit=1"),
    ),
    dict(
        kind="locmoe",
        mode="bound",
        extra=(
            "moe.router.top_k=1",
            "moe.router.gate_activation=relu",
            "moe.router.gate_bias=true",
            "moe.router.rho=1.0",
            "moe.router.locality_loss=batch",
            "moe.capacity.bound_rule=paper",
        ),
    ),
]
CASES = [dict(c, dispatch=s) for c in CASES for s in ("hierarchical", "flat")] + [
    dict(kind="locmoe", mode="factor", chunks=2),
    dict(kind="gshard", mode="dropless", chunks=3, dispatch="flat"),
]


def case(**c) -> dict:
    """A case with every key filled in."""
    return {"dispatch": "hierarchical", "chunks": 1, "placement": "contiguous", "extra": (), **c}


CASES = [case(**c) for c in CASES]


def case_name(c: dict) -> str:
    extra = ",".join(c.get("extra", ()))
    return f"{c['kind']}-{c['mode']}-{c['dispatch']}-{c['placement']}-c{c['chunks']}" + (f"-{extra}" if extra else "")


def global_weights(cfg, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.standard_normal((E, D, F)) * 0.2,
        "w2": rng.standard_normal((E, F, D)) * 0.2,
        "gate": rng.standard_normal((D, E)) * 0.4,
    }
    if cfg.moe.activation == "swiglu":
        w["w3"] = rng.standard_normal((E, D, F)) * 0.2
    return {k: v.astype(np.float32) for k, v in w.items()}


def emulated_ep(cfg, group_cls, expert_parallel_cls):
    """One process holding every expert of ``TOPOLOGY``: a backend's ``ExpertParallel`` over groups of one."""
    one = group_cls(None, (0,), (0,), 0)
    placement = ExpertPlacement.from_config(cfg.parallel, E, TOPOLOGY)
    return expert_parallel_cls(
        topology=TOPOLOGY, placement=placement, rank=0, group=one, intra=one, inter=one, scheme=cfg.parallel.dispatch
    )


def build_layer(mc, c: dict, ep=None, seed_w=0):
    """Case ``c``'s config, its layer (on ``ep(cfg)``; by default one process emulating every rank) and the
    global weights loaded into it. ``mc`` is a backend's ``moe_cases`` module."""
    cfg = mc.job(**c)
    layer = mc.MoELayer(cfg.moe, D, V, (ep or mc.emulated_ep)(cfg))
    w = global_weights(cfg, seed_w)
    mc.load_weights(layer, w)
    return cfg, layer, w


def rank_slice(rank: int) -> slice:
    """The rows of the global batch that ``rank`` holds."""
    return slice(rank * TOKENS_PER_RANK, (rank + 1) * TOKENS_PER_RANK)
