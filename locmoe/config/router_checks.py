"""Cross-field rules of the router options added for the papers' LocMoE and for today's baselines (issue 14).

Each rule raises one :class:`ConfigError` naming the field, its value and what is allowed. Which options a
router takes: the DeepSeek baselines (sigmoid scoring, node-limited top-k, the loss-free selection bias) are
options of the plain top-k routers gshard and switch; the paper's locality and balance variants belong to the
locmoe router; the gate options need a gate (not hash).
"""

from __future__ import annotations

from locmoe.config.errors import ConfigError
from locmoe.config.schema import JobConfig

BASELINE_KINDS = ("gshard", "switch")


def check_router_options(cfg: JobConfig) -> None:
    _check_baseline_options(cfg)
    _check_paper_options(cfg)
    _check_gate_options(cfg)
    _check_placement(cfg)


def _check_placement(cfg: JobConfig) -> None:
    """Sequence placement asks the first MoE layer's gate where each sequence's tokens would go."""
    if cfg.data.placement == "drawn":
        return
    has_moe = cfg.model.n_layers > cfg.model.dense_layers  # the first block above the dense ones is an MoE block
    if cfg.moe.router.kind == "hash" or not has_moe:
        raise ConfigError(
            "data.placement",
            f"'{cfg.data.placement}' places sequences by the first MoE layer's gate probabilities; this job has "
            + ("the hash router, which has no gate" if has_moe else "no MoE layer")
            + ": allowed here: 'drawn'",
        )


def _check_baseline_options(cfg: JobConfig) -> None:
    r = cfg.moe.router
    for field, on in (
        ("scoring", r.scoring == "sigmoid"),
        ("node_limit", r.node_limit > 0),
        ("bias_update_rate", r.bias_update_rate > 0),
    ):
        if on and r.kind not in BASELINE_KINDS:
            raise ConfigError(
                f"moe.router.{field}",
                f"{getattr(r, field)!r} is a DeepSeek baseline option of the "
                f"top-k routers {list(BASELINE_KINDS)}, not of router '{r.kind}'",
            )
    if r.node_score != "max" and r.node_limit == 0:
        raise ConfigError(
            "moe.router.node_score", f"'{r.node_score}' is only read with node_limit > 0 (node-limited routing is off)"
        )
    nodes = cfg.parallel.nodes
    if r.node_limit and nodes and r.node_limit > nodes:
        raise ConfigError("moe.router.node_limit", f"{r.node_limit} is more than parallel.nodes ({nodes})")
    assert r.top_k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    if r.node_limit and nodes and r.node_limit * (cfg.moe.num_experts // nodes) < r.top_k:
        raise ConfigError(
            "moe.router.node_limit",
            f"{r.node_limit} node(s) of {cfg.moe.num_experts // nodes} "
            f"experts each hold fewer than top_k = {r.top_k} experts",
        )


def _check_paper_options(cfg: JobConfig) -> None:
    r = cfg.moe.router
    if r.locality_loss == "batch" and r.kind != "locmoe":
        raise ConfigError(
            "moe.router.locality_loss",
            f"'batch' is not allowed for router '{r.kind}': the locality loss belongs to router locmoe",
        )
    if r.balance_counts == "gate" and r.kind != "locmoe":
        raise ConfigError(
            "moe.router.balance_counts",
            f"'gate' is not allowed for router '{r.kind}': it differs "
            "from 'selected' only where locmoe's intra-node-first rule changes the gate's choices",
        )


def _check_gate_options(cfg: JobConfig) -> None:
    r = cfg.moe.router
    if cfg.moe.force_balance and r.kind == "expert_choice":
        raise ConfigError(
            "moe.force_balance",
            "true is not allowed for router expert_choice, whose experts each take the same number of tokens "
            "already: force_balance replaces the choice of the token-choice routers (locmoe, gshard, switch, hash)",
        )
    if cfg.moe.force_balance and cfg.moe.domains.num_domains > 1:
        raise ConfigError(
            "moe.force_balance",
            f"true is not allowed with moe.domains.num_domains = {cfg.moe.domains.num_domains}: the round-robin "
            "over all experts would send tokens outside their domain's group (a benchmark setting: use 1 domain)",
        )
    if r.z_loss_coef > 0 and r.kind == "expert_choice":
        raise ConfigError(
            "moe.router.z_loss_coef",
            f"{r.z_loss_coef} is not allowed for router expert_choice: "
            "the router z-loss is computed by the token-choice routers",
        )
    if r.kind != "hash":
        return
    for field, on in (
        ("gate_activation", r.gate_activation != "none"),
        ("gate_bias", r.gate_bias),
        ("z_loss_coef", r.z_loss_coef > 0),
    ):
        if on:
            raise ConfigError(
                f"moe.router.{field}", f"{getattr(r, field)!r} is not allowed for router hash, which has no gate"
            )
