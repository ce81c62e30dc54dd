"""The job config: one typed dataclass per section, every field documented and bounded.

A YAML job file mirrors this tree (``model:``, ``moe:``, ``parallel:``, ...). ``locmoe.config.load``
checks types and bounds field by field; the cross-field rules live in ``locmoe.config.checks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from locmoe.config.fields import spec

CONFIG_VERSION = 1

ROUTER_KINDS = ("locmoe", "gshard", "switch", "hash", "expert_choice")
GATE_KINDS = ("auto", "grap", "dense")
CAPACITY_MODES = ("factor", "bound", "dropless")
DISPATCH_SHAPES = ("dynamic", "static")
SHARD_MODES = ("none", "optimizer", "full")
BOUND_RULES = ("cone", "quantile", "paper")
# Router options of issue 14 (the papers' LocMoE, and the baselines the field uses now)
GATE_ACTIVATIONS = ("none", "relu")
SCORINGS = ("softmax", "sigmoid")
LOCALITY_LOSSES = ("token", "batch")
BALANCE_COUNTS = ("selected", "gate")
NODE_SCORES = ("max", "top2_sum")
PAPER_FORMS = ("exact", "exp")
PAPER_SCHEDULES = ("first_batch", "ema")
ACTIVATIONS = ("swiglu", "gelu")
EXPERT_IMPLS = ("auto", "grouped", "loop")
PLACEMENTS = ("contiguous", "round_robin", "explicit")
DISPATCH_SCHEMES = ("hierarchical", "flat")
BACKENDS = ("torch", "mindspore")
DEVICES = ("auto", "cpu", "cuda", "npu", "ascend", "gpu")
DATA_FORMATS = ("auto", "text", "jsonl", "bin_uint16", "bin_uint32", "indexed", "parquet", "arrow", "datasets")
DTYPES = ("float32", "bfloat16")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class ModelConfig:
    """Sizes of the PanGu-Sigma-style decoder (dense layers at the bottom, MoE layers above)."""

    vocab_size: int = spec(256, "vocabulary size; 256 for the byte-level tokenizer", ge=2)
    d_model: int = spec(128, "hidden size d", ge=1)
    n_layers: int = spec(4, "number of transformer blocks", ge=1)
    n_heads: int = spec(4, "attention heads; must divide d_model", ge=1)
    d_ff: int = spec(512, "hidden size of the dense (non-MoE) SwiGLU FFN", ge=1)
    max_seq_len: int = spec(256, "longest sequence the rotary tables cover", ge=1)
    dense_layers: int = spec(1, "the first this-many blocks are dense; the blocks above follow moe_every", ge=0)
    moe_every: int = spec(1, "above the dense layers, every moe_every-th block is an MoE block", ge=1)
    tie_embeddings: bool = spec(True, "share the input embedding and the output projection")
    rope_theta: float = spec(10000.0, "rotary embedding base", ge=1, le=1e9)
    norm_eps: float = spec(1e-5, "RMSNorm epsilon", gt=0, le=1)
    init_std: float = spec(0.02, "standard deviation of the normal weight init", gt=0, le=1)


@dataclass
class RouterConfig:
    """Which router picks the experts, and the weights of its auxiliary losses."""

    kind: str = spec(
        "locmoe", "router: locmoe, gshard (top-2), switch (top-1), hash, expert_choice", choices=ROUTER_KINDS
    )
    gate: str = spec(
        "auto",
        "gate scores: grap (fixed orthogonal GrAP), dense (learned); auto = grap for locmoe, dense otherwise",
        choices=GATE_KINDS,
    )
    top_k: Optional[int] = spec(
        None,
        "experts per token; null = the router's own (locmoe 2, gshard 2, switch 1, hash 1, expert_choice 2 on average)",
        ge=1,
    )
    temperature: float = spec(
        1.0, "softmax temperature tau_g of the gate scores (below 0.01 the scaled scores overflow)", ge=0.01, le=100
    )
    rho: float = spec(
        0.5,
        "intra-node-first threshold: a local expert with p >= rho * p_(k) replaces the "
        "lowest-ranked remote choice; 1 disables the rule",
        gt=0,
        le=1,
    )
    aux_loss_coef: float = spec(1e-2, "alpha, weight of the load-balance loss", ge=0, le=100)
    locality_loss_coef: float = spec(1e-2, "mu, weight of the locality loss (locmoe only)", ge=0, le=100)
    hash_seed: int = spec(1234, "seed of the fixed token-id -> expert table of the hash router", ge=0)
    # --- the papers' LocMoE (docs/method.md) ---
    gate_activation: str = spec(
        "none", "relu: the paper's G = ReLU(w.x + eps) before the softmax (LocMoE Eq. 3)", choices=GATE_ACTIVATIONS
    )
    gate_bias: bool = spec(False, "a learned per-expert bias eps added to the gate scores (LocMoE Eq. 3; init 0)")
    locality_loss: str = spec(
        "token",
        "token: mean over tokens of KL(q_t || p_t); batch: the paper's "
        "KL(D_c || D_l) of the batch's distributions (LocMoE Eq. 6)",
        choices=LOCALITY_LOSSES,
    )
    locality_smoothing: float = spec(
        1e-2,
        "locality_loss batch: share of the uniform distribution mixed into "
        "the fully localised D_l, which is 0 off-node (KL would be infinite)",
        gt=0,
        lt=1,
    )
    balance_counts: str = spec(
        "selected",
        "f_e of the load-balance loss counts the choices after the "
        "intra-node-first rule (selected) or the gate's own top-k before it (gate, LocMoE "
        "Eq. 5)",
        choices=BALANCE_COUNTS,
    )
    # --- baselines the field uses now ---
    scoring: str = spec(
        "softmax",
        "affinities: softmax over experts, or sigmoid per expert normalised over the "
        "chosen k (DeepSeek-V3); gshard and switch only",
        choices=SCORINGS,
    )
    z_loss_coef: float = spec(0.0, "weight of the router z-loss mean(logsumexp(logits)^2) (ST-MoE, 1e-3)", ge=0, le=100)
    node_limit: int = spec(
        0,
        "node-limited routing (DeepSeek-V2/V3): each token picks its M best nodes, then "
        "top-k on them; 0 = off; gshard and switch only",
        ge=0,
        le=4096,
    )
    node_score: str = spec(
        "max",
        "score of a node for node_limit: its best expert (max, V2) or the sum of its two best (top2_sum, V3)",
        choices=NODE_SCORES,
    )
    bias_update_rate: float = spec(
        0.0,
        "auxiliary-loss-free balancing (DeepSeek-V3): a per-expert selection bias "
        "moved by gamma*sign(mean load - load) after each step; 0 = off; gshard and "
        "switch only (V3: 1e-3)",
        ge=0,
        le=1,
    )


@dataclass
class CapacityConfig:
    """How many token copies each expert admits per step (over the expert-parallel group)."""

    mode: str = spec(
        "factor",
        "factor: ceil(factor*k*T/E); bound: the angular-deviation lower bound; dropless: no limit",
        choices=CAPACITY_MODES,
    )
    factor: float = spec(
        1.25,
        "capacity factor c_f of mode factor (and of expert_choice); above E/k it already admits every copy",
        gt=0,
        le=1000,
    )
    bound_rule: str = spec(
        "cone",
        "estimator of the lower bound: cone (max angle per expert), quantile "
        "(an angle quantile, per-expert capacities) or paper (LocMoE Theorem 1 in the token "
        "space)",
        choices=BOUND_RULES,
    )
    paper_form: str = spec(
        "exact",
        "bound_rule paper: exact (Theorem 1, 1/(n(1-I_{d^2}(1/2,(d-1)/2)))) or exp "
        "(LocMoE+ Remark 7, exp(d*delta^2/(2-delta^2))/n)",
        choices=PAPER_FORMS,
    )
    paper_schedule: str = spec(
        "first_batch",
        "bound_rule paper: measure delta on the first training batch and "
        "keep it (LocMoE), or average it over steps with angle_momentum (ema, LocMoE+)",
        choices=PAPER_SCHEDULES,
    )
    paper_delta: float = spec(
        0.0,
        "bound_rule paper: a fixed delta (the paper measured 0.03) instead of the "
        "measured largest cosine distance; 0 = measure",
        ge=0,
        le=1,
    )
    min_factor: float = spec(0.0, "mode bound never goes below ceil(min_factor*k*T/E)", ge=0, le=1000)
    angle_momentum: float = spec(0.9, "exponential moving average of the per-expert angles across steps", ge=0, lt=1)
    angle_quantile: float = spec(0.75, "quantile of the angles used by bound_rule quantile", gt=0, le=1)
    slack: float = spec(1.05, "multiplier on the per-expert capacities of bound_rule quantile", gt=0, le=1000)
    bucket: int = spec(
        64,
        "moe.dispatch_shape static with mode bound: the experts' buffer is the largest "
        "capacity rounded up to a multiple of this (few distinct shapes to compile)",
        ge=1,
        le=1_000_000,
    )


@dataclass
class DomainsConfig:
    """Random Routed Experts (PanGu-Sigma): a sample's domain selects its group of experts."""

    num_domains: int = spec(1, "number of domains; 1 = every token may use every expert", ge=1)
    seed: int = spec(0, "seed of the fixed random domain -> expert-group map", ge=0)
    names: list[str] = spec(factory=list, doc="optional domain names, index = domain id")


@dataclass
class MoEConfig:
    """The MoE layers: experts, router, capacity and domain groups."""

    num_experts: int = spec(8, "experts per MoE layer (E)", ge=1)
    d_expert: int = spec(256, "hidden size of each expert FFN", ge=1)
    activation: str = spec("swiglu", "expert FFN activation", choices=ACTIVATIONS)
    expert_impl: str = spec(
        "auto", "grouped GEMM, per-expert loop, or auto (grouped where supported)", choices=EXPERT_IMPLS
    )
    overlap_chunks: int = spec(
        1, "split dispatch into this many chunks to overlap expert compute with all-to-all; 1 = no overlap", ge=1
    )
    check_finite: bool = spec(
        True,
        "stop with a clear error when an MoE layer's input holds NaN/Inf (costs "
        "one host sync per layer on an accelerator)",
    )
    fuse_kernels: bool = spec(
        True,
        "torch on CUDA: fuse the layer's element-wise and gather kernels with "
        "torch.compile (needs Triton and a C compiler); false = eager kernels",
    )
    dispatch_shape: str = spec(
        "dynamic",
        "dynamic: the experts see exactly their admitted copies; static: every "
        "expert a buffer of fixed capacity (factor, or the bound rounded up to "
        "capacity.bucket), as Ascend's graph mode and MindFormers run it",
        choices=DISPATCH_SHAPES,
    )
    force_balance: bool = spec(
        False,
        "for benchmarks only (Megatron-Core's moe_router_force_load_balancing, torchtitan's "
        "moe_force_load_balance): the router computes its scores and losses as usual, but token i of a "
        "rank's batch goes to experts (i*k + j) mod E, j < k (round-robin, torchtitan's rule), weighted by "
        "the router's own probabilities of those experts (renormalised over k as usual); every expert gets "
        "the same load when E divides k*T. Token-choice routers, one domain",
    )
    router: RouterConfig = spec(factory=RouterConfig, doc="router")
    capacity: CapacityConfig = spec(factory=CapacityConfig, doc="expert capacity")
    domains: DomainsConfig = spec(factory=DomainsConfig, doc="random routed experts")


@dataclass
class ParallelConfig:
    """Backend, device and the expert-parallel topology."""

    backend: str = spec("torch", "framework backend", choices=BACKENDS)
    device: str = spec("auto", "device kind; auto = cuda, else npu, else cpu", choices=DEVICES)
    nodes: int = spec(0, "nodes in the topology; 0 = from the launcher (one node per host)", ge=0)
    devices_per_node: int = spec(0, "ranks per node; 0 = from the launcher (LOCAL_WORLD_SIZE)", ge=0)
    expert_parallel_size: int = spec(0, "ranks that share one copy of the experts; 0 = all ranks", ge=0)
    placement: str = spec("contiguous", "expert -> rank map", choices=PLACEMENTS)
    placement_table: list[int] = spec(factory=list, doc="expert -> rank table of placement explicit", ge=0)
    dispatch: str = spec(
        "hierarchical",
        "all-to-all scheme: hierarchical (intra-node, then inter-node) or flat",
        choices=DISPATCH_SCHEMES,
    )
    shard: str = spec(
        "none",
        "what data-parallel ranks shard (torch: FSDP2 over the data-parallel group for the dense parameters and "
        "over the ranks holding the same experts for the experts; MindSpore: AdamW's moments): none = every rank "
        "holds everything and all-reduces its gradients; optimizer = gradients and AdamW state sharded, the "
        "parameters gathered once per step (ZeRO-2); full = the parameters too, gathered per block in the "
        "forward and again in the backward (ZeRO-3). One rank, or one process emulating a topology, has "
        "nothing to shard: docs/parallelism.md",
        choices=SHARD_MODES,
    )
    overlap_grad_reduce: bool = spec(
        False,
        "torch, shard none, several ranks: all-reduce the dense gradients in buckets while the backward runs "
        "(PyTorch's DDP, through its composable replicate) instead of in one flat copy after it; the experts "
        "keep theirs. Off until a multi-GPU measurement sets the default (docs/parallelism.md)",
    )
    timeout_s: float = spec(
        600.0,
        "collective and heartbeat timeout: a stalled or dead rank ends every rank "
        "after this long, with one line naming it (docs/reliability.md)",
        gt=0,
        le=604800,
    )
    jit: bool = spec(False, "MindSpore: compile the dense blocks with mindspore.jit")
    jit_step: bool = spec(
        False,
        "MindSpore: compile the whole training step, MoE layers included: forward and backward as one "
        "traced graph, clipping and AdamW as one more (needs moe.dispatch_shape static, capacity mode factor)",
    )


@dataclass
class DataSource:
    """One corpus: a file or folder, its format and the domain its samples belong to."""

    path: str = spec("", "file or folder; for an indexed dataset its PREFIX (of PREFIX.bin + PREFIX.idx)")
    domain: int = spec(0, "domain id of every sample from this source (jsonl rows may override)", ge=0)
    format: str = spec(
        "auto",
        "text, jsonl, bin_uint16, bin_uint32, indexed (PREFIX.bin + PREFIX.idx from "
        "`locmoe data prepare` or Megatron), parquet, arrow, datasets (a save_to_disk folder; these three "
        "need locmoe[hf-data] and a text column, optionally domain), or auto (by extension; a prefix or .bin "
        "with an .idx beside it is indexed, a save_to_disk folder is datasets)",
        choices=DATA_FORMATS,
    )


@dataclass
class DataConfig:
    """Training data: sources, tokenizer, sequence length and split."""

    sources: list[DataSource] = spec(
        factory=list,
        doc="corpora; empty = the Python standard library's own source files (real text, nothing to download)",
    )
    tokenizer: str = spec(
        "byte",
        "byte, the path of a tokenizers JSON file, or a Hugging Face tokenizer folder (tokenizer.json inside)",
        nonempty=True,
    )
    seq_len: int = spec(128, "tokens per training sequence", ge=2)
    val_fraction: float = spec(0.05, "share of each source held out for validation", gt=0, lt=1)
    max_bytes: int = spec(0, "read at most this many bytes per source; 0 = all", ge=0)
    seed: int = spec(0, "seed of the sampling order", ge=0)
    placement: str = spec(
        "drawn",
        "which node each sequence of a step trains on: drawn = rank r takes rows r*B..(r+1)*B of the drawn batch; "
        "affinity = the sequences are dealt to the nodes whose experts their tokens prefer (the first MoE "
        "layer's gate on its input, before the step; every node keeps its share of rows); embedding = the same "
        "deal from that gate on the token embeddings alone (no block runs twice): locmoe.data.placement",
        choices=("drawn", "affinity", "embedding"),
    )


@dataclass
class TrainConfig:
    """Optimiser, schedule, batch and checkpointing."""

    steps: int = spec(200, "optimiser steps", ge=1)
    batch_size: int = spec(8, "sequences per rank per micro-batch", ge=1)
    grad_accum: int = spec(1, "micro-batches per optimiser step", ge=1)
    lr: float = spec(3e-3, "peak learning rate", gt=0, le=10)
    min_lr: float = spec(3e-4, "learning rate at the end of the cosine decay", ge=0)
    warmup_steps: int = spec(20, "linear warm-up steps", ge=0)
    weight_decay: float = spec(0.1, "AdamW weight decay (not applied to norms and biases)", ge=0, le=10)
    beta1: float = spec(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = spec(0.95, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = spec(1.0, "clip the global gradient norm to this; 0 = off", ge=0)
    dtype: str = spec(
        "float32",
        "compute dtype; bfloat16: torch autocasts on CUDA/NPU (float32 on CPU), MindSpore runs bfloat16 "
        "activations on Ascend (refused on CPU)",
        choices=DTYPES,
    )
    compile: Optional[bool] = spec(
        None,
        "torch: compile each block with torch.compile; null = on CUDA only "
        "(it costs start-up time and changes no result beyond rounding)",
    )
    cuda_graph: Optional[bool] = spec(
        None,
        "torch: capture the whole training step (forward, backward, AdamW) "
        "as one CUDA graph after 3 eager steps and replay it; null = wherever the "
        "job allows it (one CUDA device, no host sync in the step)",
    )
    activation_checkpointing: bool = spec(
        False,
        "per block, keep only the inputs of attention and the FFNs "
        "and recompute them in the backward pass (less memory, ~1/3 more "
        "compute); the router runs once",
    )
    eval_every: int = spec(50, "validate every this many steps; 0 = only at the end", ge=0)
    eval_batches: int = spec(8, "validation batches per evaluation", ge=1)
    seed: int = spec(0, "seed of the weights and of dropout", ge=0)
    out_dir: str = spec(
        "runs/default",
        "checkpoints, logs and the exported router go here (relative to the working directory)",
        nonempty=True,
    )
    ckpt_every: int = spec(100, "checkpoint every this many steps (and at the end); 0 = only at the end", ge=0)
    keep_checkpoints: int = spec(2, "keep the newest this many checkpoints", ge=1)
    save_on_signal: bool = spec(
        False,
        "on SIGTERM (a scheduler's notice before it kills the job), checkpoint the step just finished "
        "before exiting; Ctrl-C never saves",
    )


@dataclass
class WandbConfig:
    """Weights & Biases (the optional extra ``locmoe[wandb]``): the same scalars as tensorboard."""

    project: str = spec("", "W&B project; empty = W&B off")
    entity: str = spec("", "W&B team or user; empty = your default entity")
    mode: str = spec(
        "online", "online, offline (files under out_dir/wandb, `wandb sync` later) or disabled", choices=WANDB_MODES
    )


@dataclass
class LoggingConfig:
    """Progress bar, tensorboard scalars and console logs."""

    log_every: int = spec(
        10,
        "write scalars every this many steps; without the progress bar (off, or output not a terminal) also "
        "print one line each time",
        ge=1,
    )
    tensorboard: bool = spec(True, "write tensorboardX events under out_dir/tb")
    progress: bool = spec(True, "tqdm progress bar on rank 0 when the output is a terminal")
    heatmap_every: int = spec(100, "expert-load heatmap image every this many steps; 0 = off", ge=0)
    wandb: WandbConfig = spec(factory=WandbConfig, doc="Weights & Biases")


@dataclass
class ExportConfig:
    """Router export for serving."""

    at_end: bool = spec(True, "export the routers to out_dir/router when training ends")
    dir: str = spec("", "export directory; empty = out_dir/router")


@dataclass
class JobConfig:
    """A whole job: what to train, on what, how, and where the results go."""

    version: int = spec(CONFIG_VERSION, "config format version", ge=1)
    name: str = spec("locmoe", "job name, used in logs")
    model: ModelConfig = spec(factory=ModelConfig, doc="model sizes")
    moe: MoEConfig = spec(factory=MoEConfig, doc="MoE layers")
    parallel: ParallelConfig = spec(factory=ParallelConfig, doc="backend and topology")
    data: DataConfig = spec(factory=DataConfig, doc="data")
    train: TrainConfig = spec(factory=TrainConfig, doc="training")
    logging: LoggingConfig = spec(factory=LoggingConfig, doc="logging")
    export: ExportConfig = spec(factory=ExportConfig, doc="router export")
