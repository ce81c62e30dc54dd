"""The pangu_sigma family, and the largest member whose training fits N devices of G GiB (``locmoe plan memory``).

A member is a job's config at another width, depth and expert count (d_model, n_layers, E), the way
``configs/pangu_sigma_small.yaml`` grows into ``pangu_sigma_1b.yaml``: each is the job's config with

- (d_model, n_layers) from ``RUNGS``, a ladder through the shipped sizes (1024 x 12, 2048 x 16) and on along the
  PanGu-Alpha / PanGu-Sigma shapes (2560 x 32 of PanGu-Alpha 2.6B, 5120 x 40 of PanGu-Alpha 13B and PanGu-Sigma);
- E from ``EXPERTS`` (16, the shipped configs', doubling; PanGu-Sigma had 640): expert parallelism over every
  device where E divides among them, else over E devices, each expert then sharded over the others;
- d_ff and d_expert at the job's ratios to d_model (pangu_sigma_1b: 2 d and d / 2), rounded to multiples of 64;
  heads of the job's head size; the job's share of dense blocks at the bottom, moe_every, router and top-k;
- the job's tokens per device (batch_size x seq_len, grad_accum): a larger cluster trains a larger global batch.

A member fits when some ``parallel.shard`` mode, with or without activation checkpointing, needs at most G GiB
per device; the cheapest such setting is reported (no recomputation before recomputation, then none < optimizer
< full: the least communication). Memory grows with each of d_model, n_layers and E, so for each rung the search
walks E up to the first that does not fit; the largest member is the highest rung that fits, with the most
experts that fit at it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from locmoe.config.errors import ConfigError
from locmoe.config.schema import SHARD_MODES, JobConfig
from locmoe.planning.memory_plan import parameter_count
from locmoe.planning.rank_memory import RankLayout, RankMemory, plan_rank_memory

RUNGS = (
    (1024, 12),
    (2048, 16),
    (2560, 32),
    (3072, 32),
    (4096, 32),
    (5120, 40),
    (6144, 48),
    (8192, 64),
    (12288, 80),
    (16384, 96),
)
EXPERTS = tuple(16 * 2**i for i in range(10))  # 16 .. 8192
SETTINGS = tuple((shard, ac) for ac in (False, True) for shard in SHARD_MODES)  # cheapest first


@dataclass(frozen=True)
class Fit:
    """A member of the family, the cheapest setting that fits it, and its plan."""

    d_model: int
    n_layers: int
    num_experts: int
    expert_parallel: int
    parameters: int  # all of them, every expert once
    active: int  # what one token multiplies: the dense part and k experts per MoE block
    shard: str
    checkpointing: bool
    memory: RankMemory

    def row(self) -> dict:
        return {
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "experts": self.num_experts,
            "EP": self.expert_parallel,
            "parameters_B": self.parameters / 1e9,
            "active_B": self.active / 1e9,
            "shard": self.shard,
            "checkpointing": "on" if self.checkpointing else "off",
            "needs_GiB": self.memory.needs / 2**30,
        }


def member(base: JobConfig, d_model: int, n_layers: int, num_experts: int, expert_parallel: int) -> JobConfig:
    """``base`` at width ``d_model``, depth ``n_layers``, ``num_experts`` experts over ``expert_parallel`` ranks."""
    m, moe = base.model, base.moe
    head = m.d_model // m.n_heads
    if d_model % head:
        raise ConfigError("model.d_model", f"{d_model} is not a multiple of the job's head size {head}")
    model = dataclasses.replace(
        m,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=d_model // head,
        d_ff=_round64(m.d_ff * d_model / m.d_model),
        dense_layers=round(n_layers * m.dense_layers / m.n_layers),
    )
    experts = dataclasses.replace(moe, num_experts=num_experts, d_expert=_round64(moe.d_expert * d_model / m.d_model))
    parallel = dataclasses.replace(base.parallel, expert_parallel_size=expert_parallel, nodes=0, devices_per_node=0)
    return dataclasses.replace(base, model=model, moe=experts, parallel=parallel)


def cheapest_fit(
    cfg: JobConfig, layout: RankLayout, budget: int, device: str = "cuda"
) -> Optional[tuple[str, bool, RankMemory]]:
    """The first of ``SETTINGS`` whose plan needs at most ``budget`` bytes, or None."""
    if plan_rank_memory(cfg, layout, "full", True, device).needs > budget:
        return None  # the least memory there is: nothing else fits either
    for shard, ac in SETTINGS:
        plan = plan_rank_memory(cfg, layout, shard, ac, device)
        if plan.needs <= budget:
            return shard, ac, plan
    return None


def expert_parallel_for(num_experts: int, devices: int) -> Optional[int]:
    """Every device when E divides among them, else E devices (each expert sharded over the other groups)."""
    if num_experts % devices == 0:
        return devices
    if devices % num_experts == 0:
        return num_experts
    return None


def largest_per_rung(
    base: JobConfig, devices: int, budget: int, devices_per_node: int = 8, device: str = "cuda"
) -> list[Fit]:
    """For each rung, the member with the most experts that fits (rungs where none fits are left out)."""
    fits = []
    for d, L in RUNGS:
        best = None
        for E in EXPERTS:
            ep = expert_parallel_for(E, devices)
            if ep is None or E % base.moe.domains.num_domains:
                continue
            cfg = member(base, d, L, E, ep)
            found = cheapest_fit(cfg, RankLayout.of(cfg, devices, devices_per_node), budget, device)
            if found is None:
                break
            best = _fit(cfg, ep, *found)
        if best is not None:
            fits.append(best)
    return fits


def largest_member(fits: list[Fit]) -> Optional[Fit]:
    """The widest and deepest rung that fits, with the most experts that fit at it (the member with the most
    parameters may be a narrow model with thousands of experts: ``largest_per_rung`` lists those too)."""
    return fits[-1] if fits else None


def _fit(cfg: JobConfig, ep: int, shard: str, ac: bool, plan: RankMemory) -> Fit:
    E, k = cfg.moe.num_experts, cfg.moe.router.top_k or 1
    total = parameter_count(cfg, E)
    experts_only = total - parameter_count(cfg, 0)
    return Fit(
        d_model=cfg.model.d_model,
        n_layers=cfg.model.n_layers,
        num_experts=E,
        expert_parallel=ep,
        parameters=total,
        active=total - experts_only + experts_only * min(k, E) // E,
        shard=shard,
        checkpointing=ac,
        memory=plan,
    )


def _round64(x: float) -> int:
    return max(64, int(round(x / 64)) * 64)
