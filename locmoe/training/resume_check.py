"""What a resumed run changes against the checkpoint's own config.

A change of the model's shape (``model.*``, the experts, the router's tensors) or of which rank holds which
expert cannot continue the run: CheckpointError naming the field. Every other change is applied — the
config's values, not the checkpoint's, drive the optimiser and the schedule — and reported, one line each,
with what it does (the learning rate at the resumed step, the batches that now differ from an uninterrupted
run). Operational fields (logging, export, evaluation, checkpoint cadence, timeouts) are not reported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from locmoe.checkpoint.directory import CheckpointError
from locmoe.config.schema import JobConfig, TrainConfig

# Fields whose change means another model (shapes, tensors) or another expert -> rank map of the optimiser state.
STRUCTURAL = (
    "model.vocab_size",
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.d_ff",
    "model.dense_layers",
    "model.moe_every",
    "model.tie_embeddings",
    "moe.num_experts",
    "moe.d_expert",
    "moe.activation",
    "moe.router.kind",
    "moe.router.gate",
    "moe.router.gate_bias",
    "parallel.placement",
    "parallel.placement_table",
)
# Not reported: operational fields, and the backend and topology, which read_train_state checks against the
# layout the run actually has (a config may say 0 = from the launcher).
NOT_REPORTED = (
    "name",
    "version",
    "logging.",
    "export.",
    "train.out_dir",
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.eval_every",
    "train.eval_batches",
    "train.compile",
    "parallel.backend",
    "parallel.nodes",
    "parallel.devices_per_node",
    "parallel.expert_parallel_size",
    "parallel.timeout_s",
    "parallel.device",
    "parallel.jit",
    "moe.check_finite",
    "moe.fuse_kernels",
    "moe.expert_impl",
)
SCHEDULE = ("train.steps", "train.lr", "train.min_lr", "train.warmup_steps")
OPTIMISER = ("train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip")
BATCHES = ("data.", "train.batch_size", "train.grad_accum")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.lr": 3e-3, ...}: every leaf of a config dict by its dotted name (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def _matches(key: str, names: tuple) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


def resume_changes(
    saved: dict, cfg: JobConfig, step: int, where: str, rows: tuple[int, int] | None = None
) -> list[str]:
    """The report lines of resuming ``cfg`` from a checkpoint (at ``step``, in ``where``) trained with the
    config dict ``saved``; CheckpointError for a structural change. ``rows``: the sequences per micro-batch of
    the whole job then and now (a checkpoint of a sharded run resumes on other ranks, ``train.batch_size``
    changed with them)."""
    from locmoe.config import config_to_dict

    old, new = flatten(saved), flatten(config_to_dict(cfg))
    # a field only one side has is a schema change between locmoe versions, not the user's: new fields
    # default to the earlier behaviour
    changed = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    structural = [k for k in changed if _matches(k, STRUCTURAL)]
    if structural:
        shown = "; ".join(
            f"{k} is {new.get(k)!r}, the checkpoint was trained with {old.get(k)!r}" for k in structural[:3]
        )
        raise CheckpointError(
            f"--resume from {where}: {shown}. A resumed run keeps the checkpoint's model and "
            "expert placement; train this config into a new train.out_dir instead"
        )
    lines = []
    schedule_effect = _schedule_effect(saved.get("train", {}), cfg.train, step)
    for k in changed:
        if _matches(k, NOT_REPORTED):
            continue
        if k in SCHEDULE:
            effect = schedule_effect
        elif k in OPTIMISER:
            effect = f"applied from step {step + 1}"
        elif k == "train.batch_size" and rows is not None and rows[0] == rows[1]:
            effect = f"applied; on these ranks the global batch is the checkpoint's, {rows[1]} sequences"
        elif _matches(k, BATCHES):
            effect = f"applied; the batches from step {step + 1} differ from an uninterrupted run's"
        elif k == "train.seed":
            effect = "no effect: the weights and RNG states come from the checkpoint"
        else:
            effect = "applied"
        lines.append(f"warning: resume: {k} changed {old.get(k)!r} -> {new.get(k)!r} ({effect})")
    return lines


def _schedule_effect(saved_train: dict, t: TrainConfig, step: int) -> str:
    """How the learning rate of the next step moves when the schedule's fields changed."""
    from locmoe.training.schedule import lr_at

    try:
        before = dataclasses.replace(t, **{k.split(".")[1]: saved_train[k.split(".")[1]] for k in SCHEDULE})
    except (KeyError, TypeError):
        return "applied"
    a, b = lr_at(step, before), lr_at(step, t)
    return f"applied: the learning rate of step {step + 1} is {b:.3g}, the checkpoint's schedule gave {a:.3g}"
