"""Cross-field rules of the job config, and the resolution of its ``auto``/``null`` defaults.

Each rule raises one :class:`ConfigError` naming the field, its value and what is allowed. Rules that need
the launcher's world size live in :mod:`locmoe.parallel.topology` (``topology_from_config``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from locmoe.config.errors import ConfigError
from locmoe.config.router_checks import check_router_options
from locmoe.config.schema import CONFIG_VERSION, JobConfig, MoEConfig

# Experts per token each router uses when top_k is null; None = any k.
DEFAULT_TOP_K = {"locmoe": 2, "gshard": 2, "switch": 1, "hash": 1, "expert_choice": 2}
FIXED_TOP_K = {"gshard": 2, "switch": 1, "hash": 1}


def resolve_and_check(cfg: JobConfig) -> JobConfig:
    """Fill ``top_k: null`` and ``gate: auto`` with the router's own values, then apply every rule."""
    if cfg.version != CONFIG_VERSION:
        raise ConfigError(
            "version", f"{cfg.version} is not supported by this locmoe: the config format version is {CONFIG_VERSION}"
        )
    router = cfg.moe.router
    if router.top_k is None:
        router = dataclasses.replace(router, top_k=DEFAULT_TOP_K[router.kind])
    if router.gate == "auto":
        router = dataclasses.replace(router, gate="grap" if router.kind == "locmoe" else "dense")
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, router=router))
    _check_model(cfg)
    _check_moe(cfg.moe, cfg.model.d_model)
    _check_parallel(cfg)
    _check_train(cfg)
    check_router_options(cfg)
    _check_jit_step(cfg)
    _check_overlap(cfg)
    return cfg


def _check_model(cfg: JobConfig) -> None:
    m = cfg.model
    if m.d_model % m.n_heads:
        raise ConfigError("model.n_heads", f"{m.n_heads} must divide model.d_model ({m.d_model})")
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(
            "model.n_heads",
            f"{m.n_heads} leaves an odd head size {m.d_model // m.n_heads}; rotary embeddings need an even head size",
        )
    if m.dense_layers > m.n_layers:
        raise ConfigError("model.dense_layers", f"{m.dense_layers} must be <= model.n_layers ({m.n_layers})")
    if m.max_seq_len < cfg.data.seq_len:
        raise ConfigError("data.seq_len", f"{cfg.data.seq_len} must be <= model.max_seq_len ({m.max_seq_len})")


def _check_moe(moe: MoEConfig, d_model: int) -> None:
    r, E, D = moe.router, moe.num_experts, moe.domains.num_domains
    fixed = FIXED_TOP_K.get(r.kind)
    if fixed is not None and r.top_k != fixed:
        raise ConfigError(
            "moe.router.top_k",
            f"{r.top_k} is not allowed for router '{r.kind}', which routes "
            f"each token to exactly {fixed} expert(s): set top_k: {fixed} or null",
        )
    if D > E:
        raise ConfigError(
            "moe.domains.num_domains",
            f"{D} domains for {E} experts would leave domains with no "
            "expert; each domain needs at least one (num_domains <= moe.num_experts)",
        )
    if E % D:
        raise ConfigError(
            "moe.domains.num_domains",
            f"{D} must divide moe.num_experts ({E}) so that every domain gets an equal group of experts",
        )
    group = E // D
    assert r.top_k is not None  # filled from DEFAULT_TOP_K above
    if r.top_k > group:
        where = "moe.num_experts" if D == 1 else "moe.domains.num_domains"
        raise ConfigError(
            "moe.router.top_k", f"{r.top_k} must be <= the experts a token may use ({group}; set by {where})"
        )
    if r.gate == "grap" and d_model % E:
        raise ConfigError(
            "moe.num_experts",
            f"{E} must divide model.d_model ({d_model}): the GrAP gate cuts the hidden vector into E equal groups",
        )
    if r.kind == "expert_choice" and moe.capacity.mode != "factor":
        raise ConfigError(
            "moe.capacity.mode",
            f"'{moe.capacity.mode}' is not allowed for router expert_choice, "
            "whose experts each pick ceil(factor*k*T/E) tokens: use factor",
        )
    if r.kind == "hash" and moe.capacity.mode == "bound":
        raise ConfigError(
            "moe.capacity.mode",
            "'bound' is not allowed for router hash: the bound is measured "
            "from the angles between tokens and gate vectors, and the hash router has no gate; use "
            "factor or dropless",
        )
    if moe.domains.names and len(moe.domains.names) != D:
        raise ConfigError("moe.domains.names", f"{len(moe.domains.names)} names given for {D} domains")
    _check_dispatch_shape(moe)


def _check_dispatch_shape(moe) -> None:
    """A static buffer needs a capacity to size it, and a router whose copies it can hold."""
    if moe.dispatch_shape != "static":
        return
    if moe.capacity.mode == "dropless":
        raise ConfigError(
            "moe.dispatch_shape",
            "'static' is not allowed with moe.capacity.mode dropless: every "
            "expert's buffer would need room for all k*T copies; use factor or bound",
        )
    if moe.router.kind == "expert_choice":
        raise ConfigError(
            "moe.dispatch_shape",
            "'static' is not allowed for router expert_choice (its experts "
            "already take a fixed number of tokens each); use dynamic",
        )
    if moe.overlap_chunks > 1:
        raise ConfigError(
            "moe.dispatch_shape",
            f"'static' moves one fixed-size block per expert; "
            f"moe.overlap_chunks = {moe.overlap_chunks} is not supported with it (use 1)",
        )


def _check_overlap(cfg: JobConfig) -> None:
    """``parallel.overlap_grad_reduce`` is torch's DDP and applies to replicated ranks only: refused where it
    would be ignored."""
    p = cfg.parallel
    if p.overlap_grad_reduce and p.backend == "mindspore":
        raise ConfigError("parallel.overlap_grad_reduce", "true needs the torch backend; allowed with mindspore: false")
    if p.overlap_grad_reduce and p.shard != "none":
        raise ConfigError(
            "parallel.overlap_grad_reduce",
            f"true with parallel.shard {p.shard!r}: FSDP already reduces during the backward; allowed: false "
            "(or parallel.shard none)",
        )


def _check_jit_step(cfg: JobConfig) -> None:
    """A compiled step replays the shapes and host values of its first call: nothing in it may read the
    device on the host or change shape from step to step."""
    if not cfg.parallel.jit_step or cfg.model.dense_layers >= cfg.model.n_layers:
        return
    moe, why = cfg.moe, None
    if cfg.parallel.backend != "mindspore":
        why = f"is a MindSpore field; parallel.backend is {cfg.parallel.backend} (torch: train.cuda_graph)"
    elif moe.dispatch_shape != "static":
        why = "needs moe.dispatch_shape static: dynamic dispatch reads its split sizes on the host"
    elif moe.capacity.mode != "factor":
        why = (
            f"needs moe.capacity.mode factor, not {moe.capacity.mode}: the bound sizes the static buffer from "
            "this step's routing, a value the host reads"
        )
    elif moe.router.bias_update_rate > 0:
        why = "cannot update moe.router's selection bias (bias_update_rate > 0) on the host inside the step"
    if why:
        raise ConfigError("parallel.jit_step", f"true {why}")


def _check_parallel(cfg: JobConfig) -> None:
    p, E = cfg.parallel, cfg.moe.num_experts
    if p.placement == "explicit" and len(p.placement_table) != E:
        raise ConfigError(
            "parallel.placement_table",
            f"has {len(p.placement_table)} entries; placement explicit needs one rank per expert ({E})",
        )
    if p.placement != "explicit" and p.placement_table:
        raise ConfigError("parallel.placement_table", f"is only read with placement explicit, not '{p.placement}'")
    if (p.nodes == 0) != (p.devices_per_node == 0):
        raise ConfigError(
            "parallel.nodes",
            f"nodes={p.nodes}, devices_per_node={p.devices_per_node}: set both "
            "to emulate a topology, or both to 0 to take it from the launcher (parallel.nodes and "
            "parallel.devices_per_node)",
        )
    if p.expert_parallel_size and E % p.expert_parallel_size:
        raise ConfigError(
            "moe.num_experts", f"{E} is not divisible by parallel.expert_parallel_size ({p.expert_parallel_size})"
        )


def _check_train(cfg: JobConfig) -> None:
    t = cfg.train
    if t.min_lr > t.lr:
        raise ConfigError("train.min_lr", f"{t.min_lr} must be <= train.lr ({t.lr})")
    # Refused, not clamped: a warm-up longer than the run means the lr never reaches train.lr and the
    # cosine decay never runs, which is a typo (steps=50 left over from a smoke test), not a schedule.
    if t.warmup_steps > t.steps:
        raise ConfigError(
            "train.warmup_steps",
            f"{t.warmup_steps} must be <= train.steps ({t.steps}): lower train.warmup_steps or raise train.steps",
        )
    for i, src in enumerate(cfg.data.sources):
        if not src.path:
            raise ConfigError(f"data.sources[{i}].path", "is empty: name a file or folder")
        if src.domain >= cfg.moe.domains.num_domains:
            raise ConfigError(
                f"data.sources[{i}].domain",
                f"{src.domain} must be < moe.domains.num_domains ({cfg.moe.domains.num_domains})",
            )


def check_paths(cfg: JobConfig) -> None:
    """Filesystem rules, checked by ``locmoe train`` before anything is written (not at load: a config read
    back from a checkpoint on another machine must not depend on this machine's files). The output folders
    must be directories or creatable as such: not an existing file, nor below one."""
    for field, value in (("train.out_dir", cfg.train.out_dir), ("export.dir", cfg.export.dir)):
        if not value:
            continue
        path = Path(value).expanduser()
        for node in (path, *path.parents):
            if node.exists() and not node.is_dir():
                what = "is an existing file" if node == path else f"is below {node}, an existing file"
                raise ConfigError(field, f"{value!r} {what}; allowed: a new or existing directory")
