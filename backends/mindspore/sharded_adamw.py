"""AdamW with its moments sharded over the ranks that hold each parameter (``parallel.shard: optimizer | full``
with more than one rank): ZeRO-1, what MindSpore's optimizer parallel does in semi-auto parallel mode, for our
MoE model, which runs in PyNative (+ jit) without it.

A parameter's group is the ranks holding it: the world for the replicated (dense) parameters, ``ctx.expert_dp``
for the experts (the ranks holding the same experts; a group of one when EP = world, which leaves nothing to
shard). Member i of a group of N owns elements [i·c, (i+1)·c) of the *flattened* parameter, c = ceil(size / N),
zero-padded past the end (AdamW keeps zeros at zero). Flattened rather than split along dim 0: an expert weight
[E_local, d, f] with E_local < N, or a norm's [d] with d < N, would leave ranks with nothing along dim 0; the
flat split is balanced to one element whatever the shape, and padding costs at most N - 1 elements a parameter.

One step: the gradients are averaged over the ranks as without sharding (``optim.sync_gradients``' all-reduce,
so the global-norm clip still reads full gradients); each rank takes its slice of every parameter and gradient,
runs the fused kernel (``optim.fused_adamw``, same coefficients) on its moment slices, and one AllGather per
group rebuilds the full parameters. Per rank: 2·c moment floats per parameter instead of 2·size, plus a c-float
slice of the parameter for the kernel to update in place. ``parallel.shard: full`` is the same here: the
parameters stay replicated (sharding them would need MindSpore's semi-auto parallel, which our layer does not use).

MindSpore's CPU build (2.10, msrun) has no ReduceScatter: every rank receives the whole reduced gradient and
keeps its slice. On Ascend a reduce-scatter in place of the all-reduce would halve the gradient traffic (an
all-reduce is a reduce-scatter plus an all-gather), with the clip's norm then summed over the slices; not done
here, as nothing here can run it.

Checkpoints keep format 2 unchanged: ``state_dict`` gathers this rank's full moments (those of its own experts)
and ``load_state_dict`` slices full ones, so ``optimizer_rank{r}`` holds what an unsharded run writes: a sharded
run resumes on any world size an unsharded one does, either way, and ``locmoe convert`` reads it as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import mindspore as ms
from mindspore import Parameter, Tensor, ops

from backends.mindspore.collectives import Group, all_gather_rows
from backends.mindspore.distributed import DistContext
from backends.mindspore.optim import AdamW, make_optimizer, moment
from locmoe.config.schema import ParallelConfig, TrainConfig
from locmoe.model_spec import is_expert_param


@dataclass(frozen=True)
class Slice:
    """Member ``index`` of ``count`` owns elements [index·chunk, (index+1)·chunk) of a flattened tensor of
    ``size`` elements, chunk = ceil(size / count)."""

    index: int
    count: int
    size: int

    @property
    def chunk(self) -> int:
        return -(-self.size // self.count)

    def take(self, x: Tensor) -> Tensor:
        """x (``size`` elements, any shape) → its [chunk] slice, zeros past the end."""
        lo = min(self.index * self.chunk, self.size)
        hi = min(lo + self.chunk, self.size)
        part, short = x.reshape(-1)[lo:hi], self.chunk - (hi - lo)
        if not short:
            return part
        pad = ops.zeros((short,), x.dtype)
        return ops.cat([part, pad]) if hi > lo else pad

    def join(self, rows: Tensor, shape: tuple) -> Tensor:
        """rows: [count, chunk], every member's slice in group order → the whole tensor of ``shape``."""
        return rows.reshape(-1)[: self.size].reshape(shape)


class ShardedAdamW(AdamW):
    """:class:`optim.AdamW` whose moments (``exp_avg``, ``exp_avg_sq``: name → [chunk] Parameter) are this rank's
    slices; ``shards`` holds the parameter slices the fused kernel updates. ``step`` = ``owned`` → ``apply`` →
    ``publish`` (the AllGathers); the unit test runs the first two per emulated rank and ``rebuild`` once."""

    def __init__(self, params: dict[str, Parameter], t: TrainConfig, dense: Group, expert: Group):
        self.groups = [(g, [n for n in params if is_expert_param(n) == e]) for g, e in ((dense, False), (expert, True))]
        self.slices = {n: Slice(g.my_index, g.size, params[n].size) for g, names in self.groups for n in names}
        super().__init__(params, t)
        self.shards = {n: moment("shard", n, self.zeros(n, p)) for n, p in params.items()}

    def zeros(self, name: str, p: Parameter) -> Tensor:
        return ops.zeros((self.slices[name].chunk,), ms.float32)

    def moment_bytes(self) -> tuple[int, int]:
        """(bytes of this rank's moment slices, bytes of the whole moments an unsharded optimiser would hold)."""
        mine = sum(m.size * m.itemsize for key in ("exp_avg", "exp_avg_sq") for m in getattr(self, key).values())
        return mine, sum(2 * p.size * 4 for p in self.params.values())  # the moments are float32

    def owned(self, grads: dict[str, Tensor]) -> tuple[dict, dict]:
        """This rank's slices of the parameters (copied into ``shards``) and of ``grads``, by name."""
        for n, p in self.params.items():
            ops.assign(self.shards[n], self.slices[n].take(p))
        return self.shards, {n: self.slices[n].take(g) for n, g in grads.items()}

    def publish(self) -> None:
        self.rebuild(self.gathered(self.shards))

    def gathered(self, slices: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """name → [count, chunk]: every member's slice, by one AllGather (float32) per group, dense first, in
        the same order on every rank."""
        rows = {}
        for group, names in self.groups:
            if not names:
                continue
            flat = ops.cat([slices[n].astype(ms.float32) for n in names]).reshape(1, -1)
            every = all_gather_rows(flat, group).reshape(group.size, -1)  # [count, Σ chunk]
            offset = 0
            for n in names:
                rows[n] = every[:, offset : offset + self.slices[n].chunk]
                offset += self.slices[n].chunk
        return rows

    def rebuild(self, rows: dict[str, Tensor]) -> None:
        """Write the whole parameters from every member's slices (``gathered``)."""
        for n, p in self.params.items():
            ops.assign(p, self.slices[n].join(rows[n], p.shape).astype(p.dtype))

    def state_dict(self) -> dict:
        """The unsharded optimiser's state (full moments by name), gathered: collective, every rank calls it."""
        full = {}
        for key in ("exp_avg", "exp_avg_sq"):
            rows = self.gathered(getattr(self, key))
            full[key] = {n: self.slices[n].join(rows[n], p.shape) for n, p in self.params.items()}
        return {"step": self.step_count, **full}

    def load_state_dict(self, state: dict) -> None:
        """Full moments by name (an unsharded optimiser's ``state_dict``, or a checkpoint's) → this rank's slices."""
        for key in ("exp_avg", "exp_avg_sq"):
            missing = set(self.params) - set(state[key])
            if missing:
                raise KeyError(f"optimiser state lacks {key} of {sorted(missing)[:5]}")
            for n, m in getattr(self, key).items():
                ops.assign(m, self.slices[n].take(Tensor(state[key][n], ms.float32)))
        self.step_count = int(state["step"])


def shards_moments(parallel: ParallelConfig, ctx: DistContext) -> bool:
    """Whether this run shards AdamW's moments: ``parallel.shard`` optimizer or full, over several processes
    (one process, emulating a topology or not, has no peer to share them with)."""
    return parallel.shard != "none" and ctx.world_size > 1


def optimizer_for(model, t: TrainConfig, parallel: ParallelConfig, ctx: DistContext) -> AdamW:
    """The training run's optimiser: sharded as ``parallel.shard`` says, else :func:`optim.make_optimizer`'s."""
    if not shards_moments(parallel, ctx):
        return make_optimizer(model, t)
    params = {n: p for n, p in model.parameters_and_names() if p.requires_grad}
    return ShardedAdamW(params, t, ctx.world, ctx.expert_dp)


def sharding_note(optimizer: AdamW, parallel: ParallelConfig) -> str:
    """What the start message says of sharding ('' when nothing is sharded)."""
    if not isinstance(optimizer, ShardedAdamW):
        return ""
    (dense, _), (expert, _) = optimizer.groups
    mine, whole = optimizer.moment_bytes()
    note = (
        f"AdamW moments sharded over {dense.size} ranks, experts' over {expert.size}: "
        f"{mine / 1e6:.3g} MB a rank instead of {whole / 1e6:.3g} MB"
    )
    if parallel.shard == "full":
        note += " (parallel.shard full shards only the optimizer state on MindSpore: the parameters stay replicated)"
    return note
