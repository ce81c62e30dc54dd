"""Heterogeneous deployment planning: a throughput model per device kind and deployment configuration, and
an exhaustive search for the best mix of serving instances under a device budget (after "High-Throughput
LLM inference on Heterogeneous Clusters", arXiv 2504.15303).

An *instance* of config (kind, tp, ep, batch) spans ``max(tp, ep)`` devices of one kind: attention and
dense weights are sharded ``tp`` ways (and replicated over the rest), expert weights over all its devices
(``ep`` ways by expert, split further by TP inside), the KV cache spread over all its devices; ``batch``
is the most requests it runs at once. Prefill is
compute-bound, a decode step is bound by the larger of weight + KV reads and compute, plus the
collectives (TP all-reduce, EP all-to-all: two of each per layer) over the device link.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from locmoe.planning.errors import PlanningError

GB = 1e9
STEP_OVERHEAD_S = 2e-3  # per decode step: kernel launches, sampling, scheduling (stated)
USABLE_MEMORY = 0.9  # share of device memory for weights + KV (the rest: activations, runtime)


@dataclass(frozen=True)
class DeviceKind:
    """What one device of a kind achieves (not its spec-sheet peak): bf16 GEMM TFLOP/s, HBM TB/s, memory
    GB, and the link an instance's collectives use (GB/s per device) with its fixed cost per collective
    call. ``source`` says where the numbers came from."""

    name: str
    tflops: float
    mem_gb: float
    hbm_tbps: float
    link_gbps: float
    link_latency_us: float = 35.0
    source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """The served MoE model: parameters in billions (total for memory, active per token for compute)."""

    name: str
    total_params_b: float
    active_params_b: float
    expert_params_b: float  # the part of total_params_b that is expert weights
    num_layers: int
    d_model: int
    num_experts: int
    top_k: int
    kv_bytes_per_token: int  # K and V of every layer for one token
    bytes_per_param: float = 2.0


@dataclass(frozen=True)
class DeployConfig:
    kind: str
    tp: int
    ep: int
    batch: int

    @property
    def devices(self) -> int:
        return max(self.tp, self.ep)


@dataclass(frozen=True)
class Workload:
    """Mean request lengths (tokens) and the longest context an instance must hold per request."""

    mean_prompt: float
    mean_output: float
    max_context: int


class InstanceModel:
    """Time model of one instance; every time in seconds. Both times are affine in the token count
    (plus a max for the decode step), so the coefficients are computed once here."""

    def __init__(self, kind: DeviceKind, model: ModelSpec, config: DeployConfig):
        self.kind, self.model, self.config = kind, model, config
        m, c, n = model, config, config.devices
        self._flop_s = 2 * m.active_params_b * GB / (n * kind.tflops * 1e12)  # compute s per token
        self._coll_s, self._coll_fixed = self._collectives()
        self._dense_bytes = (m.total_params_b - m.expert_params_b) / c.tp * GB * m.bytes_per_param
        self._expert_bytes = m.expert_params_b / n * GB * m.bytes_per_param
        self._kv_bytes = m.kv_bytes_per_token / n  # per token of context
        self._hbm = kind.hbm_tbps * 1e12
        self._miss = 1.0 - m.top_k / m.num_experts

    def weight_gb_per_device(self) -> float:
        return (self._dense_bytes + self._expert_bytes) / GB

    def kv_token_capacity(self) -> int:
        """KV-cache tokens the instance holds once the weights are in (0 if they do not fit)."""
        free = (self.kind.mem_gb * USABLE_MEMORY - self.weight_gb_per_device()) * GB * self.config.devices
        return max(0, int(free // self.model.kv_bytes_per_token))

    def fits(self, max_context: int) -> bool:
        return self.kv_token_capacity() >= self.config.batch * max_context

    def prefill_time(self, tokens: float) -> float:
        return (self._flop_s + self._coll_s) * tokens + self._coll_fixed

    def decode_step_time(self, batch: int, context: float) -> float:
        """One decode step of ``batch`` requests whose contexts average ``context`` tokens."""
        if batch <= 0:
            return 0.0
        touched = 1.0 - self._miss**batch  # share of experts the step reads
        memory = (self._dense_bytes + self._expert_bytes * touched + batch * context * self._kv_bytes) / self._hbm
        return max(memory, self._flop_s * batch) + self._coll_s * batch + self._coll_fixed + STEP_OVERHEAD_S

    def _collectives(self) -> tuple[float, float]:
        """(s per token, s per call) of two TP all-reduces and two EP all-to-alls per layer."""
        m, c = self.model, self.config
        act = m.d_model * 2.0  # bf16 activation bytes per token
        bw, lat = self.kind.link_gbps * GB, self.kind.link_latency_us * 1e-6
        per_token, fixed = 0.0, 0.0
        if c.tp > 1:  # ring all-reduce moves 2(n-1)/n
            per_token, fixed = per_token + 2 * 2 * act * (c.tp - 1) / c.tp / bw, fixed + 2 * lat
        if c.ep > 1:  # dispatch + combine of k copies
            per_token, fixed = per_token + 2 * act * m.top_k * (c.ep - 1) / c.ep / bw, fixed + 2 * lat
        return per_token * m.num_layers, fixed * m.num_layers

    def throughput(self, w: Workload) -> float:
        """Output tokens/s at full batch: each request costs its prefill, then shares decode steps."""
        b = self.config.batch
        per_request = (
            self.prefill_time(w.mean_prompt)
            + w.mean_output * self.decode_step_time(b, w.mean_prompt + w.mean_output / 2) / b
        )
        return w.mean_output / per_request


@dataclass
class Deployment:
    """A mix of instances: (config, count) pairs, and its modelled output tokens/s."""

    instances: list
    throughput: float

    def devices_used(self) -> dict:
        used: dict = {}
        for cfg, n in self.instances:
            used[cfg.kind] = used.get(cfg.kind, 0) + n * cfg.devices
        return used

    def expand(self) -> list[DeployConfig]:
        return [cfg for cfg, n in self.instances for _ in range(n)]


def candidate_configs(
    kind: DeviceKind,
    model: ModelSpec,
    w: Workload,
    max_devices: int,
    sizes=(1, 2, 4, 8),
    batches=(8, 16, 32, 64, 128, 256),
) -> list[DeployConfig]:
    """Every (tp, ep, batch) of ``kind`` that fits in memory on at most ``max_devices`` devices."""
    out = []
    for tp, ep, b in itertools.product(sizes, sizes, batches):
        if max(tp, ep) > max_devices or (tp % ep and ep % tp) or model.num_experts % ep:
            continue
        cfg = DeployConfig(kind.name, tp, ep, b)
        if InstanceModel(kind, model, cfg).fits(w.max_context):
            out.append(cfg)
    return out


def plan_deployment(kinds: dict, model: ModelSpec, w: Workload, budget: dict) -> Deployment:
    """The mix of instances with the most modelled output tokens/s using at most ``budget[kind]`` devices
    of each kind (exhaustive: every count of every instance size, best config per size)."""
    unknown = sorted(set(budget) - set(kinds))
    if unknown:
        raise PlanningError(f"budget names device kinds {unknown}; known kinds: {sorted(kinds)}")
    per_kind = []
    for name, count in sorted(budget.items()):
        best = {}  # instance size -> (throughput, config)
        for cfg in candidate_configs(kinds[name], model, w, count):
            thr = InstanceModel(kinds[name], model, cfg).throughput(w)
            if cfg.devices not in best or thr > best[cfg.devices][0]:
                best[cfg.devices] = (thr, cfg)
        per_kind.append(_mixes(best, count))
    if all(len(m) <= 1 for m in per_kind):  # only the empty mix everywhere
        raise PlanningError(_infeasible_message(kinds, model, w, budget))
    winner = max(
        itertools.product(*per_kind), key=lambda combo: (sum(t for t, _ in combo), -sum(len(i) for _, i in combo))
    )
    return Deployment([ci for _, inst in winner for ci in inst], sum(t for t, _ in winner))


def _mixes(best: dict, count: int) -> list[tuple[float, list]]:
    """Every way to fill at most ``count`` devices with instances of the sizes in ``best``."""
    sizes = sorted(best)
    out = []
    for ns in itertools.product(*[range(count // s + 1) for s in sizes]):
        if sum(n * s for n, s in zip(ns, sizes)) <= count:
            out.append(
                (sum(n * best[s][0] for n, s in zip(ns, sizes)), [(best[s][1], n) for n, s in zip(ns, sizes) if n])
            )
    return out


def _infeasible_message(kinds: dict, model: ModelSpec, w: Workload, budget: dict) -> str:
    need = model.total_params_b * model.bytes_per_param
    parts = []
    for name, count in sorted(budget.items()):
        k = kinds[name]
        n = max([s for s in (1, 2, 4, 8) if s <= count] or [0])
        usable = n * k.mem_gb * USABLE_MEMORY
        parts.append(
            f"{count} x {name} ({k.mem_gb:g} GB each): the largest instance, {n} devices, has {usable:.0f} GB usable"
        )
    return (
        f"infeasible budget: model {model.name} needs {need:.0f} GB of weights plus "
        f"{model.kv_bytes_per_token * w.max_context / GB:.2f} GB of KV cache per request of "
        f"{w.max_context} tokens (at least 8 requests per instance), which does not fit: "
        + "; ".join(parts)
        + ". Add devices of a kind or lower max_context."
    )


def naive_deployment(
    kinds: dict, model: ModelSpec, w: Workload, budget: dict, batches=(8, 16, 32, 64, 128, 256)
) -> Deployment:
    """The baseline: one config for every kind: tp = ep = the smallest power-of-two size whose instance
    fits on every kind of the budget, with the largest batch that fits on all of them; as many instances
    as each kind's budget allows (none on a kind with fewer devices than that size)."""
    for size in (1, 2, 4, 8):
        fitting = [
            b
            for b in batches
            if all(InstanceModel(kinds[n], model, DeployConfig(n, size, size, b)).fits(w.max_context) for n in budget)
        ]
        if fitting and any(budget[n] >= size for n in budget):
            inst = [
                (DeployConfig(n, size, size, max(fitting)), budget[n] // size)
                for n in sorted(budget)
                if budget[n] >= size
            ]
            thr = sum(k * InstanceModel(kinds[c.kind], model, c).throughput(w) for c, k in inst)
            return Deployment(inst, thr)
    raise PlanningError(_infeasible_message(kinds, model, w, budget))
