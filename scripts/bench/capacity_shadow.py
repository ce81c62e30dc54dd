"""The capacity rules side by side on the same run: a trained checkpoint's MoE-layer inputs on validation batches,
routed once by the numpy reference, and admitted under each rule — the paper's Theorem-1 bound (with the δ the
run estimated on its first batch, from the checkpoint), the ``quantile`` bound (estimated afresh over these
batches) and factor 1.25. Routing does not depend on the capacity, so the drops are a true counterfactual.

    python scripts/bench/capacity_shadow.py RUN_DIR --batches 2 --out shadow.json      (CPU, one process)

Prints and writes, per rule: capacity per expert over the mean load k·T/E (mean over layers, batches and
experts), and the dropped fraction of the copies.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from locmoe.report import format_table, write_json  # noqa: E402


def rule_variants(moe) -> dict:
    """The capacity configs compared: the run's own (paper), quantile (its shipped settings), factor 1.25."""
    c = moe.capacity
    return {
        "paper": moe,
        "quantile": dataclasses.replace(moe, capacity=dataclasses.replace(c, mode="bound", bound_rule="quantile")),
        "factor 1.25": dataclasses.replace(moe, capacity=dataclasses.replace(c, mode="factor", factor=1.25)),
    }


def layer_inputs(run_dir: Path, batches: int):
    """(config, checkpoint tensors, {layer: [x [T, d] per batch]}) of the run's newest checkpoint."""
    import torch
    from safetensors.numpy import load_file

    from backends.torch.checkpoint import load_model_weights
    from backends.torch.distributed import init_distributed
    from backends.torch.trace import trace_config
    from backends.torch.train import build_model
    from locmoe.checkpoint.directory import resolve
    from locmoe.data import BatchSampler, load_corpus, load_tokenizer

    path = resolve(run_dir, announce=False)
    cfg = trace_config(path, [])
    model = build_model(cfg, init_distributed(cfg.parallel))
    load_model_weights(model, path)
    model.eval()
    seen: dict = {i: [] for i in model.moe_layers}
    for i in model.moe_layers:
        model.layers[i].moe.register_forward_pre_hook(  # pyright: ignore[reportAttributeAccessIssue]  # a Module
            lambda mod, args, i=i: seen[i].append(args[0].detach().reshape(-1, args[0].shape[-1]).double().numpy())
        )
    corpus = load_corpus(cfg.data, load_tokenizer(cfg.data.tokenizer), cfg.moe.domains.num_domains)
    W = cfg.parallel.nodes * cfg.parallel.devices_per_node
    sampler = BatchSampler(corpus, cfg.data.seq_len, cfg.train.batch_size * W, rank=0, world=1, seed=cfg.data.seed)
    with torch.no_grad():
        for b in range(batches):
            tokens, _, domain = (torch.from_numpy(a) for a in sampler.batch(b, split="val"))
            model(tokens, domain)
    return cfg, load_file(str(path / "model.safetensors")), seen


def shadow(run_dir: Path, batches: int = 2) -> dict:
    """{rule: {"capacity_over_mean_load", "dropped_fraction"}} over the run's MoE layers and ``batches``."""
    from locmoe.parallel.topology import ExpertPlacement, Topology
    from locmoe.routing import RouterState, route

    cfg, weights, seen = layer_inputs(run_dir, batches)
    topo = Topology(cfg.parallel.nodes, cfg.parallel.devices_per_node)
    placement = ExpertPlacement.from_config(cfg.parallel, cfg.moe.num_experts, topo)
    E, k = cfg.moe.num_experts, cfg.moe.router.top_k
    out = {}
    for rule, moe in rule_variants(cfg.moe).items():
        caps, dropped, copies = [], 0, 0
        for layer, xs in seen.items():
            get = lambda n: weights.get(f"layers.{layer}.moe.router.{n}")  # noqa: E731
            # the paper rule keeps the δ the run estimated on its first batch; the others start afresh
            state = RouterState(angle_ema=get("angle_ema") if rule == "paper" else None)
            for x in xs:
                T = x.shape[0]
                ranks = np.repeat(np.arange(topo.world_size), T // topo.world_size)
                gate, eps = get("gate_weight"), get("gate_bias")
                r = route(
                    x,
                    moe,
                    placement,
                    ranks,
                    gate_weight=None if gate is None else gate.astype(np.float64),
                    gate_bias=None if eps is None else eps.astype(np.float64),
                    state=state,
                )
                state = r.state if rule != "paper" else state
                caps.append(r.capacity.mean() / (k * T / E))
                dropped, copies = dropped + r.plan.dropped(), copies + len(r.plan.kept)
        out[rule] = {"capacity_over_mean_load": float(np.mean(caps)), "dropped_fraction": dropped / max(copies, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a training run's out_dir (its newest checkpoint is read)")
    p.add_argument("--batches", type=int, default=2, help="validation batches (of the run's training batch size)")
    p.add_argument("--out", required=True, help="JSON file")
    args = p.parse_args()
    result = shadow(Path(args.run_dir), args.batches)
    print(format_table([{"rule": k, **v} for k, v in result.items()]))
    print(f"wrote {write_json(args.out, {'run_dir': args.run_dir, 'batches': args.batches, 'rules': result})}")


if __name__ == "__main__":
    main()
