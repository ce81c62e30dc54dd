"""AdamW, gradient synchronisation across ranks, and global-norm clipping.

The objective of a W-rank run is the mean of the ranks' losses, so every gradient is averaged over W.
Replicated parameters: all-reduce over the world, divide by W. Expert parameters: the all-to-all's
backward already summed every rank's contribution on the expert's owner; all-reduce over the ranks that
hold the same experts (if EP < world) and divide by W. One process emulating W ranks needs neither.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from backends.torch.collectives import all_reduce_
from backends.torch.distributed import DistContext
from backends.torch.sharding import is_sharded, local, replicated
from locmoe.config.schema import TrainConfig
from locmoe.model_spec import is_expert_param


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices and embeddings, none on norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    # fused: one kernel for every parameter's update on CUDA (the foreach path launches several per tensor
    # list); the same AdamW arithmetic
    fused = all(p.device.type == "cuda" for p in decay + rest) or None
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=fused)


def _split(model: torch.nn.Module) -> tuple[list, list]:
    dense, expert = [], []
    for name, p in model.named_parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # a rank whose experts got no tokens still joins the reduce
        (expert if is_expert_param(name) else dense).append(p.grad)
    return dense, expert


def _reduce_flat(grads: list, group, scale: float) -> None:
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_(flat, group)
    flat.mul_(scale)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sync_gradients(model: torch.nn.Module, ctx: DistContext, sharded: bool = False) -> None:
    """Average every gradient over the W ranks. ``sharded`` (``backends.torch.sharding``): FSDP reduced the
    wrapped gradients during the backward; what is left are the experts no FSDP group holds (one copy of the
    experts per EP group), whose all-to-all backward already summed them on their owner: divide by W."""
    if ctx.world_size == 1:
        return
    dense, expert = _split(model)
    W = ctx.world_size
    if sharded:
        unwrapped = [g for g in expert if not is_sharded(g)]
        if unwrapped:
            torch._foreach_mul_(unwrapped, 1.0 / W)  # pyright: ignore[reportPrivateImportUsage]  # public kernel, not in torch's __all__
        return
    if not replicated(model):  # with parallel.overlap_grad_reduce, DDP reduced them during the backward
        _reduce_flat(dense, ctx.world, 1.0 / W)
    _reduce_flat(expert, ctx.expert_dp, 1.0 / W)


def clip_grad_norm(
    model: torch.nn.Module,
    ctx: DistContext,
    max_norm: float,
    optimizer: torch.optim.Optimizer | None = None,
    sharded: bool = False,
) -> torch.Tensor:
    """Global L2 norm over every parameter of the model (experts counted once per EP group); clip to
    ``max_norm`` when > 0. Returns the norm before clipping as a device scalar.

    NOTE: no host sync: the clip factor is applied on the device (1 when the norm is within bounds). Given a
    fused AdamW, the factor is handed to its kernel (``grad_scale``, which it divides every gradient by, the
    way AMP's GradScaler unscales) instead of a separate pass over all gradients."""
    dense, expert = _split(model)
    device = next(model.parameters()).device
    if sharded:
        # every element is held by one rank of the world: its shard of a dense tensor, its shard of its experts
        dense, expert = [local(g) for g in dense], [local(g) for g in expert]
        squares = _squared_norm(dense + expert, device)
        all_reduce_(squares, ctx.world)
    else:
        expert_sq = _squared_norm(expert, device)
        if ctx.world_size > 1:
            all_reduce_(expert_sq, ctx.ep)  # each EP rank holds its own experts; dense gradients are replicated
        squares = _squared_norm(dense, device) + expert_sq
    norm = squares.sqrt()
    fused = optimizer if optimizer is not None and all(g.get("fused") for g in optimizer.param_groups) else None
    # grad_scale: read by the fused AdamW kernel (AMP's GradScaler sets it too), not declared on Optimizer
    if fused is not None:
        fused.grad_scale = None  # pyright: ignore[reportAttributeAccessIssue]
    if max_norm > 0:
        clipping = norm > max_norm
        if fused is not None:
            scale = torch.where(clipping, (norm + 1e-6) / max_norm, torch.ones_like(norm))
            fused.grad_scale = scale  # pyright: ignore[reportAttributeAccessIssue]
        else:
            factor = torch.where(clipping, max_norm / (norm + 1e-6), torch.ones_like(norm))
            torch._foreach_mul_(dense + expert, factor)  # pyright: ignore[reportPrivateImportUsage]  # public kernel, not in torch's __all__
    return norm


def _squared_norm(grads: list, device: torch.device) -> torch.Tensor:
    """Σ ‖g‖² in fp32 (one foreach kernel per dtype rather than two kernels per tensor)."""
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads)  # pyright: ignore[reportPrivateImportUsage]  # public kernel, not in torch's __all__
    return torch.stack([n.float() for n in norms]).pow(2).sum()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """A device-tensor learning rate (a CUDA-graphed step reads it) is filled in place: no host sync."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def all_reduce_mean(values: list[float], ctx: DistContext, device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if ctx.world_size > 1:
        dist.all_reduce(t, group=ctx.world.handle)
        t /= ctx.world_size
    return t.tolist()
