"""How many bytes one rank of a real multi-rank torch job holds in a training step, by what holds them, and the
step's peak: the plan ``locmoe plan memory`` prints and ``scripts/bench/memory_plan_check.py`` measures.

Unlike ``memory_plan.plan_memory`` (a lower bound, which refuses a config before it is built), this plan aims at
what ``torch.cuda.max_memory_allocated`` reports, for a layout of ``devices`` ranks and a ``parallel.shard`` mode
as ``backends.torch.sharding`` applies it (FSDP2, fp32 master weights gathered in fp32, bf16 autocast):

- dense parameters, their gradients and AdamW's two moments are sharded over all W ranks (``optimizer``,
  ``full``), the experts' over the W / EP ranks holding the same experts; FSDP2 cuts dim 0 into
  ``ceil(rows / group)`` pieces, so each rank is planned at the largest piece (that padding is the constant
  beside "÷ group size");
- ``optimizer`` keeps every block's gathered parameters from its forward to its backward; ``full`` gathers a
  block again for its backward (about two blocks at once with the prefetch); the root (embedding, final norm)
  stays gathered;
- under autocast every matmul weight's bf16 copy is kept for the backward (the autocast cache and autograd
  hold it: FSDP's resharding does not free it); the experts' w1|w3 are stacked and cast for the grouped GEMM.

The step is walked in order: the end of the forward, each block's backward from the top (its saved tensors,
copies and, with checkpointing, its recomputed activations are freed as its gradients appear), and the
optimizer step. The peak is the largest of these moments. What the plan calls ``framework`` is not allocated
by torch's allocator and is added to say whether a device fits: the CUDA context, cuBLAS/NCCL workspaces
(``FRAMEWORK_BYTES``) and the caching allocator's slack (``ALLOCATOR_SLACK`` of the peak).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from locmoe.config.schema import JobConfig
from locmoe.planning import saved_activations as sa
from locmoe.planning.memory_plan import layer_counts
from locmoe.planning.rank_parameters import (
    PartBytes,
    RankLayout,
    effective_shard,
    expert_whole,
    part_bytes,
    scaled,
)

FP32 = 4
GIB = 1 << 30
FRAMEWORK_BYTES = GIB  # CUDA context (~0.5 GiB with torch's kernels loaded), cuBLAS and NCCL buffers
ALLOCATOR_SLACK = 0.05  # reserved but unallocated memory of the caching allocator, as a share of the peak


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds, by what holds them (each at its own largest), and the step's peak."""

    parameters: int  # fp32 master weights at rest
    gradients: int  # fp32, after the backward
    optimizer: int  # AdamW's two moments
    gathered: int  # unsharded parameters FSDP holds at the peak's side (optimizer: all blocks; full: ~two)
    compute_weights: int  # bf16 copies of the matmul weights kept for the backward
    activations: int  # what autograd keeps over the forward (blocks and head)
    logits: int  # the loss's fp32 log-probabilities and the gradients of the logits
    all_to_all: int  # send + receive buffers of one MoE layer (0 without an exchange)
    transient: int  # the largest working set inside one block's backward
    peak: int  # the largest moment of the step: what max_memory_allocated reports
    framework: int  # outside the allocator's count: FRAMEWORK_BYTES + ALLOCATOR_SLACK of the peak
    peak_at: str  # which moment

    @property
    def needs(self) -> int:
        """What a device must have for this rank."""
        return self.peak + self.framework

    def parts(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {"needs": self.needs}


def plan_rank_memory(
    cfg: JobConfig, layout: RankLayout, shard: str, checkpointing: bool | None = None, device: str = "cuda"
) -> RankMemory:
    """The bytes of one rank of ``layout`` training ``cfg`` with ``parallel.shard = shard``."""
    shard = effective_shard(shard, layout)
    ex = sa.Execution.of(cfg, device, checkpointing)
    parts = part_bytes(cfg, layout, shard, ex)
    n_dense, n_moe = layer_counts(cfg)
    T = cfg.train.batch_size * cfg.data.seq_len  # tokens of one micro-batch on this rank
    exchange = layout.ep > 1
    rows = sa.rows_per_token(cfg, exchange)
    a2a = 0
    if exchange and n_moe:
        # send + receive; the hierarchical scheme's relay between its two stages is one buffer more
        hierarchical = cfg.parallel.dispatch == "hierarchical"
        relay = hierarchical and layout.ep_nodes > 1 and min(layout.ep, layout.devices_per_node) > 1
        a2a = int((3 if relay else 2) * rows * T * cfg.model.d_model * ex.compute_bytes)
    blocks = {
        kind: _BlockCost.of(cfg, ex, parts[kind], shard, kind == "moe", rows, T, a2a if kind == "moe" else 0)
        for kind in ("dense", "moe")
    }
    counts = {"dense": n_dense, "moe": n_moe}
    total = sum((scaled(parts[k], counts[k]) for k in counts), parts["root"])
    accumulating = cfg.train.grad_accum > 1
    grads = total.at_rest if shard != "none" else total.whole
    moments = 2 * total.at_rest
    static = total.at_rest + moments + (grads if accumulating else 0)
    root_gathered = parts["root"].gathered if shard != "none" else 0
    gathered_fwd = root_gathered + (total.gathered - parts["root"].gathered if shard == "optimizer" else 0)
    acts = sum(counts[k] * blocks[k].saved for k in counts) + int(T * sa.head_per_token(cfg, ex))
    # checkpointed blocks keep no weight copies for the backward, but autocast caches the dense ones until the
    # forward ends (the experts cast inside their checkpoint)
    copies_kept = 0 if ex.checkpointing else total.copies + total.expert_copies
    cache_only = total.copies if ex.checkpointing else 0
    forward_end = static + gathered_fwd + copies_kept + cache_only + acts + int(T * sa.logits_per_token(cfg, ex, False))
    # the backward starts with the forward's tensors (less autocast's cache), the loss's gradients, and the tied
    # LM head's gradient, made first
    start = static + gathered_fwd + copies_kept + acts + int(T * sa.logits_per_token(cfg, ex, True))
    backward = _backward_top(cfg, blocks, start + parts["root"].whole, shard, accumulating)
    reduce_buffer = 0
    if shard == "none" and layout.world > 1:  # sync_gradients all-reduces one flat copy of the grads of a kind
        expert = counts["moe"] * expert_whole(cfg, layout)
        reduce_buffer = max(grads - expert, expert)
    moments_at = [
        (forward_end, "end of the forward"),
        (backward, "inside a block's backward"),
        (total.at_rest + grads + moments + reduce_buffer, "optimizer step"),
    ]
    peak, where = max(moments_at)
    present = [b for b in blocks.values() if counts[b.kind]]
    full_gather = 2 * max((b.part.gathered for b in present), default=0) if shard == "full" else 0
    return RankMemory(
        parameters=total.at_rest,
        gradients=grads,
        optimizer=moments,
        gathered=gathered_fwd + full_gather,
        compute_weights=copies_kept + cache_only,
        activations=acts,
        logits=int(T * sa.logits_per_token(cfg, ex, True)),
        all_to_all=a2a,
        transient=max((b.working + b.remat for b in present), default=0),
        peak=peak,
        framework=FRAMEWORK_BYTES + int(ALLOCATOR_SLACK * peak),
        peak_at=where,
    )


@dataclass(frozen=True)
class _BlockCost:
    kind: str
    part: PartBytes
    saved: int  # activations kept until its backward
    kept_copies: int  # weight copies kept until its backward (none when checkpointed: recomputed)
    remat: int  # checkpointed: the activations and weight copies its backward recomputes
    working: int  # its backward's gradients (activations', one weight's) and all-to-all buffers
    grads_made: int  # unsharded fp32 gradients it makes (and, sharded, the reduce-scatter's input)
    gather: int  # full: the block and the next one gathered for the backward

    @staticmethod
    def of(cfg, ex, part: PartBytes, shard: str, moe: bool, rows: float, T: int, a2a: int) -> "_BlockCost":
        copies = part.copies + part.expert_copies
        attention, ffn = sa.recompute_per_token(cfg, ex, moe, rows)
        if ex.checkpointing:  # one checkpointed half at a time, with its weights cast again
            attention_copies = ex.compute_bytes * 4 * cfg.model.d_model**2 if ex.compute_bytes < FP32 else 0
            remat = max(int(T * attention) + attention_copies, int(T * ffn) + copies - attention_copies)
        else:
            remat = 0
        return _BlockCost(
            kind="moe" if moe else "dense",
            part=part,
            saved=int(T * sa.block_per_token(cfg, ex, moe, rows)),
            kept_copies=0 if ex.checkpointing else copies,
            remat=remat,
            working=int(T * sa.backward_working_per_token(cfg, ex, moe, rows)) + part.largest_grad + a2a,
            grads_made=part.whole * (2 if shard != "none" and part.gathered else 1),
            gather=2 * part.gathered if shard == "full" else 0,
        )


def _backward_top(cfg: JobConfig, blocks: dict, state: int, shard: str, accumulating: bool) -> int:
    """The highest point of the backward, from ``state`` at its start, block by block from the top. Blocks come
    in runs of identical units whose state changes by the same amount each, so only a run's first and last units
    can hold its highest point (``n_layers`` may be huge: nothing loops over the layers)."""
    top = state
    for kinds, count in backward_runs(cfg):
        inside, delta = _unit_peak([blocks[k] for k in kinds], shard, accumulating)
        top = max(top, state + inside + max(0, (count - 1) * delta))
        state += count * delta
    return top


def _unit_peak(blocks: list, shard: str, accumulating: bool) -> tuple[int, int]:
    """(the highest point above the starting state inside these blocks' backwards, the state's change)."""
    offset, top = 0, 0
    for b in blocks:
        # NOTE: a block's backward frees its saved tensors and weight copies op by op as it makes the weights'
        # gradients: what it adds at most is its recomputation and working set, and its new gradients where they
        # outweigh what it frees (measured on CPU: within 3 % of the profiler's peak, where adding both whole
        # was 20 % over)
        held = b.saved + b.kept_copies + b.remat
        top = max(top, offset + b.remat + b.working + b.gather + max(0, b.grads_made - held))
        offset += _after(b, shard, accumulating)
    return top, offset


def _after(b: _BlockCost, shard: str, accumulating: bool) -> int:
    """What one block's backward leaves: its saved tensors and kept copies freed, its gradients kept (already
    there when accumulating), and (optimizer) its gathered parameters freed."""
    change = -b.saved - b.kept_copies
    if not accumulating:
        change += b.part.at_rest if shard != "none" else b.part.whole
    if shard == "optimizer":
        change -= b.part.gathered
    return change


def backward_runs(cfg: JobConfig) -> list[tuple[tuple[str, ...], int]]:
    """The blocks in backward order as runs of identical units: (kinds of one unit, how many units). Above the
    dense blocks every ``moe_every``-th block is MoE; a unit is one MoE block and the dense ones after it."""
    m = cfg.model
    above = max(m.n_layers - m.dense_layers, 0)
    unit = ("dense",) * (m.moe_every - 1) + ("moe",)
    full, rest = divmod(above, m.moe_every)
    runs = []
    if rest:
        runs.append((("dense",) * (rest - 1) + ("moe",), 1))
    runs += [(unit, full), (("dense",), min(m.dense_layers, m.n_layers))]
    return [(kinds, count) for kinds, count in runs if count]
