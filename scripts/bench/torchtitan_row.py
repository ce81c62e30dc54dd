"""The ``torchtitan`` row of ``train_throughput.py``: torchtitan's Qwen3-MoE at our sizes, trained the way its
trainer trains it, for the same batches and timing as our rows.

Built by torchtitan 0.3.0's own builders (``torchtitan.models.qwen3``: ``_build_qwen3_moe_layers`` for our MoE
blocks, ``_build_qwen3_layers`` for our dense ones, at ``moe_layer_indices``), then what ``Trainer.__init__``
does on one rank: the model on the meta device, ``parallelize_qwen3`` (per-block ``torch.compile``, FSDP2 over
a mesh of one with bf16 parameters and fp32 reductions), ``to_empty`` + ``init_weights``, AdamW through
``OptimizersContainer`` (``default_adamw``: fused), the MoE load-balancing hook, ``CrossEntropyLoss``
(compiled), and its step: forward + backward (through ``wrap_with_cuda_graph`` as its trainer does, unless
that fails), ``clip_grad_norm_``, ``optimizers.step()``.

What differs from our model (the row's note says so): QK-norm (RMSNorm on each head's q and k), flex
attention (a block mask, compiled with max-autotune) where ours runs SDPA, routing balanced by a
per-expert selection bias moved after each step (aux-loss-free, ``load_balance_coeff`` 1e-3) where ours
has a load-balance loss, softmax top-k renormalised (GShard-like, no LocMoE rule, no capacity: dropless),
no activation checkpointing (as our rows), plain CE instead of its ``ChunkedLossWrapper`` (vocab 256).
Needs ``import torchtitan`` to work (``scripts/bench/gpu_install_wheels.sh``) and, on torch 2.11, the shims
of ``torchtitan_shims.py``.
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable

import torch

DIFFERS = (
    "QK-norm, flex attention (ours SDPA), aux-loss-free bias balancing (ours a balance loss), softmax top-k "
    "dropless (no LocMoE rule, no capacity)"
)


def build_config(cfg, attn_backend: str, force_balance: bool):
    """torchtitan's ``Qwen3Model.Config`` at the sizes of our job ``cfg``: its MoE layer config where our block is
    an MoE block, its dense one elsewhere; tied embeddings, our RoPE base and sequence length."""
    from torchtitan.models.common import CosSinRoPE, Embedding, Linear  # pyright: ignore[reportMissingImports]
    from torchtitan.models.qwen3 import (  # pyright: ignore[reportMissingImports]
        _EMBEDDING_SKIP_INIT,
        _LINEAR_INIT,
        Qwen3Model,
        _build_qwen3_layers,
        _build_qwen3_moe_layers,
        _qwen3_norm,
    )

    from locmoe.model_spec import moe_layer_indices

    m, moe = cfg.model, cfg.moe
    head_dim = m.d_model // m.n_heads
    rope = CosSinRoPE.Config(dim=head_dim, max_seq_len=cfg.data.seq_len, theta=m.rope_theta)
    common = dict(
        n_layers=m.n_layers, dim=m.d_model, n_heads=m.n_heads, n_kv_heads=m.n_heads, head_dim=head_dim, rope=rope
    )
    dense = _build_qwen3_layers(hidden_dim=m.d_ff, attn_backend=attn_backend, **common)
    sparse = _build_qwen3_moe_layers(
        moe_hidden_dim=moe.d_expert,
        num_experts=moe.num_experts,
        top_k=moe.router.top_k,
        attn_backend=attn_backend,
        moe_comm_backend="standard",
        **common,
    )
    moe_blocks = set(moe_layer_indices(m))
    layers = [sparse[i] if i in moe_blocks else dense[i] for i in range(m.n_layers)]
    for layer in layers:  # what Decoder.Config.update_from_config does for a Trainer.Config
        if getattr(layer, "moe", None) is not None:
            layer.moe.router._debug_force_load_balance = force_balance
    return Qwen3Model.Config(
        vocab_size=m.vocab_size,
        dim=m.d_model,
        norm=_qwen3_norm(m.d_model),
        enable_weight_tying=m.tie_embeddings,
        tok_embeddings=Embedding.Config(
            num_embeddings=m.vocab_size, embedding_dim=m.d_model, param_init=_EMBEDDING_SKIP_INIT
        ),
        lm_head=Linear.Config(in_features=m.d_model, out_features=m.vocab_size, param_init=_LINEAR_INIT),
        layers=layers,
    )


def _process_group(device: torch.device) -> bool:
    """A default process group of one rank (FSDP2 needs a mesh); True if this call created it."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch's __all__
    return True


def torchtitan_step(
    cfg,
    batches,
    device: torch.device,
    *,
    compile_blocks: bool,
    attn_backend: str = "flex",
    force_balance: bool = False,
    cuda_graph: bool = True,
    log: Callable = print,
) -> tuple[Callable, int, str, Callable]:
    """(step(), parameter count, note, close()) of torchtitan's trainer on our batches (``batches.get(i)`` →
    x, y, domain), one optimiser step per call. ``close`` frees what the row holds (its process group)."""
    import torchtitan_shims

    shims = torchtitan_shims.apply()
    import torch.distributed as dist
    from torchtitan.components.loss import CrossEntropyLoss  # pyright: ignore[reportMissingImports]
    from torchtitan.components.optimizer import default_adamw, register_moe_load_balancing_hook  # pyright: ignore[reportMissingImports]
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig  # pyright: ignore[reportMissingImports]
    from torchtitan.distributed import ParallelDims  # pyright: ignore[reportMissingImports]
    from torchtitan.distributed import utils as dist_utils  # pyright: ignore[reportMissingImports]
    from torchtitan.distributed.spmd_types import annotate_input_spmd_types  # pyright: ignore[reportMissingImports]
    from torchtitan.models.qwen3 import parallelize_qwen3  # pyright: ignore[reportMissingImports]

    made_group = _process_group(device)
    t = cfg.train
    model_config = build_config(cfg, attn_backend, force_balance)
    parallelism = ParallelismConfig()  # one rank: dp_shard -1 -> 1, spmd_types backend (the trainer's default)
    dims = ParallelDims.from_config(parallelism, world_size=1)
    training = TrainingConfig(local_batch_size=t.batch_size, seq_len=cfg.data.seq_len, max_norm=t.grad_clip)
    compile_config = CompileConfig(enable=compile_blocks, components=["model", "loss"])
    with torch.device("meta"):
        model = model_config.build()
    n_params = sum(p.numel() for p in model.parameters())
    model = parallelize_qwen3(
        model,
        parallel_dims=dims,
        training=training,
        parallelism=parallelism,
        compile_config=compile_config,
        ac_config=None,  # our rows run without activation checkpointing too
        dump_folder=tempfile.mkdtemp(prefix="torchtitan_"),
    )
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    optimizers = default_adamw(lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay).build(
        model_parts=[model]
    )
    register_moe_load_balancing_hook(optimizers, [model], dims)
    loss_fn = CrossEntropyLoss.Config(global_vocab_size=cfg.model.vocab_size).build(compile_config=compile_config)
    context = dist_utils.get_spmd_context(parallel_dims=dims, spmd_typechecking=False)
    positions = torch.arange(cfg.data.seq_len, device=device).expand(t.batch_size, -1)  # one document a row

    def fwd_bwd(inputs, labels, valid, extra):
        with context():
            pred = model(inputs, **extra)
            loss, _ = loss_fn(pred, labels, valid)
            del pred
            loss.backward()
        return loss

    graphed = fwd_bwd
    if cuda_graph and device.type == "cuda":
        from torchtitan.distributed.cudagraph import wrap_with_cuda_graph  # pyright: ignore[reportMissingImports]

        graphed = wrap_with_cuda_graph(fwd_bwd)
    state: dict[str, Any] = dict(step=0, fwd_bwd=graphed, graph="captured" if graphed is not fwd_bwd else "eager")

    def step():
        optimizers.zero_grad(set_to_none=graphed is fwd_bwd)  # the trainer keeps graph-owned grads
        x, y, _ = batches.get(state["step"])
        state["step"] += 1
        # as the trainer's post_dataloading_process: the masks of its flex / varlen attention, built each step
        extra = {"positions": positions, "attention_masks": model.get_attention_masks(positions=positions)}
        with context():
            x, y, extra = annotate_input_spmd_types(dims, x, y, extra)
        valid = torch.tensor(y.numel(), device=device)
        try:
            state["fwd_bwd"](x, y, valid, extra)
        # the capture failed, or a replay was refused (torchtitan 0.3.0's wrapper refuses a BlockMask rebuilt each
        # step: ValueError): the trainer would stop; the bench runs eager and says so
        except (RuntimeError, ValueError) as err:
            if state["fwd_bwd"] is fwd_bwd:
                raise
            state["fwd_bwd"], state["graph"] = fwd_bwd, f"capture failed: {str(err).splitlines()[0][:160]}"
            log(f"torchtitan cuda graph: {state['graph']}; the step stays eager")
            optimizers.zero_grad(set_to_none=True)
            fwd_bwd(x, y, valid, extra)
        dist_utils.clip_grad_norm_(list(model.parameters()), t.grad_clip, foreach=True)
        optimizers.step()

    def close():
        if made_group and dist.is_initialized():
            dist.destroy_process_group()

    import torchtitan  # pyright: ignore[reportMissingImports]

    note = f"torchtitan {getattr(torchtitan, '__version__', '0.3.0')}, {attn_backend} attention; differs: {DIFFERS}"
    if shims:
        note += f"; shims: {', '.join(shims)}"
    step.state, step.model = state, model
    return step, n_params, note, close
