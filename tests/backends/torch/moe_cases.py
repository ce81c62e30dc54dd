"""Shared by the torch MoE tests and their torchrun worker: layer configs, global weights, batches, and the
single-process (all experts local) reference run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from backends.torch.collectives import Group
from backends.torch.distributed import ExpertParallel
from backends.torch.moe_layer import MoELayer
from tests import machine_share
from tests import moe_cases_common as common
from tests.moe_cases_common import CASES, TOKENS_PER_RANK, TOPOLOGY, D, E, F, V, case, case_name, global_weights, job  # noqa: F401


def load_weights(layer: MoELayer, w: dict) -> None:
    experts = list(layer.ep.local_experts)
    with torch.no_grad():
        for name in ("w1", "w2", "w3"):
            if name in w:
                getattr(layer.experts, name).copy_(torch.from_numpy(w[name][experts]))
        if layer.router.gate_weight is not None:
            layer.router.gate_weight.copy_(torch.from_numpy(w["gate"]))


def global_batch(seed=1, ranks=TOPOLOGY.world_size):
    g = torch.Generator().manual_seed(seed)
    T = TOKENS_PER_RANK * ranks
    x = torch.randn(T, D, generator=g)
    return (
        x,
        torch.randint(0, V, (T,), generator=g),
        torch.randint(0, 2, (T,), generator=g),
        torch.randn(T, D, generator=g),
    )


def emulated_ep(cfg) -> ExpertParallel:
    return common.emulated_ep(cfg, Group, ExpertParallel)


def run_layer(layer: MoELayer, x, ids, domain, g, num_ranks: int):
    """Forward + backward of Σ y·g + aux/num_ranks; returns y, x.grad, metrics (layer keeps param grads)."""
    x = x.clone().requires_grad_()
    domain = domain if layer.moe.domains.num_domains > 1 else None
    y, aux, m = layer(x, token_ids=ids, domain=domain)
    ((y * g).sum() + aux / num_ranks).backward()
    return y.detach(), x.grad.detach(), m


def single_process_reference(c: dict, seed_w=0, seed_x=1):
    """The same layer with every expert local, on the whole batch: the result the EP run must equal."""
    cfg, layer, w = common.build_layer(sys.modules[__name__], c, seed_w=seed_w)
    x, ids, dom, g = global_batch(seed_x)
    y, gx, m = run_layer(layer, x, ids, dom, g, 1)
    grads = {n: p.grad.detach().numpy() for n, p in layer.named_parameters() if p.grad is not None}
    return cfg, layer, w, (x, ids, dom, g), y.numpy(), gx.numpy(), grads, m


def torchrun_report(worker: str, out: Path) -> dict:
    """Run ``tests/backends/torch/<worker>`` on 4 gloo ranks (torchrun) and read its report: {case name: row}."""
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    script = str(root / "tests" / "backends" / "torch" / worker)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", script, str(out)]
    proc = machine_share.run_alone(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {r["name"]: r for r in json.loads(out.read_text())}
