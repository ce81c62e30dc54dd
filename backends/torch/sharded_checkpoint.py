"""Sharded checkpoints of the torch backend (``parallel.shard`` optimizer or full, several ranks): every rank
writes its own shards of the weights and AdamW moments in parallel with ``torch.distributed.checkpoint`` (DCP),
in DCP's safetensors layout (``locmoe.checkpoint.sharded_weights`` describes the files; nothing in them is unpickled,
unlike DCP's default ``.metadata`` pickle). The directory is still built under a temporary name and sealed by
rank 0 with a manifest (``locmoe.checkpoint.directory``), so a kill mid-save leaves the previous checkpoint the newest.

Resharding: DCP reads each piece a rank asks for from whichever files hold it, so a run saved on W ranks
resumes on W' (and another EP size where the experts divide): dense tensors are asked for by row range, experts
by id. Without sharding the same reader fills whole tensors, so any layout can read a sharded checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from backends.torch.sharding import chunk_range, is_sharded, local, shard_rows
from locmoe.checkpoint.directory import CheckpointError, maybe_inject_fault
from locmoe.checkpoint.sharded_weights import MODEL, MOMENTS, SHARDED_DIR, STEP, expert_key
from locmoe.model_spec import is_expert_param, parameter_shapes


def dcp_state(model, optimizer) -> dict[str, torch.Tensor]:
    """Flat key -> this rank's live tensor (shared storage, so that a load fills the model in place): the
    weights as ``model.<name>``, the moments as ``<moment>.<name>``; an expert tensor split by expert id."""
    names = set(parameter_shapes(model.cfg))
    params = dict(model.named_parameters())
    ids = list(model.expert_ids())
    out = {}
    for name, t in model.state_dict().items():
        if name not in names:
            continue
        out.update(_entries(MODEL, name, t, ids))
        state = optimizer.state.get(params.get(name), {})
        for key in MOMENTS:
            if key in state:
                out.update(_entries(key, name, state[key], ids))
    return out


def _entries(prefix: str, name: str, t: torch.Tensor, ids: list) -> dict[str, torch.Tensor]:
    if not is_expert_param(name):
        return {f"{prefix}.{name}": t.detach()}
    held = ids
    if is_sharded(t):  # FSDP's Shard(0) over the ranks holding the same experts: whole experts, in torch.chunk pieces
        mesh = t.device_mesh
        start, stop = chunk_range(len(ids), mesh.size(), mesh.get_local_rank())
        held = ids[start:stop]
    rows = local(t.detach())
    return {expert_key(prefix, name, e): rows[j] for j, e in enumerate(held)}


def save_sharded(model, optimizer, tmp: Path, step: int) -> None:
    """Every rank writes its shards into ``tmp/sharded/`` (collective)."""
    from torch.distributed.checkpoint import HuggingFaceStorageWriter, save  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch's __all__

    if torch.distributed.get_rank() > 0:
        maybe_inject_fault("kill_in_sharded_save", step)  # test hook: a rank dies before it wrote its shards
    state = dcp_state(model, optimizer)
    state[STEP] = _step_count(optimizer)
    save(state, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDED_DIR), save_distributed=True))


def load_sharded(path: Path, model, optimizer) -> None:
    """Fill the model and AdamW from ``path/sharded/`` (collective), whatever layout wrote it."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader, load  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch's __all__

    init_optimizer_state(optimizer)
    state = dcp_state(model, optimizer)
    step = torch.zeros((), dtype=torch.float32)
    state[STEP] = step
    try:
        load(state, storage_reader=HuggingFaceStorageReader(str(path / SHARDED_DIR)))
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path / SHARDED_DIR} cannot be read into this model ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    for s in optimizer.state.values():
        s["step"].copy_(step)


def _step_count(optimizer) -> torch.Tensor:
    """AdamW's step count (every parameter's is the same) as a CPU scalar."""
    for s in optimizer.state.values():
        return torch.as_tensor(s["step"], dtype=torch.float32).detach().cpu().reshape(())
    return torch.zeros((), dtype=torch.float32)


def init_optimizer_state(optimizer) -> None:
    """Create AdamW's state (zero moments, step 0) where it does not exist yet, so that a load has tensors of
    the right placement to fill: one update at learning rate 0 on zero gradients, as
    ``torch.distributed.checkpoint.state_dict`` does (the weights do not move: decay and step are scaled by 0)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if all(p in optimizer.state for p in params):
        return
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        if torch.is_tensor(g["lr"]):
            g["lr"] = g["lr"].clone().fill_(0.0)
        else:
            g["lr"] = 0.0
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for g, lr in zip(optimizer.param_groups, saved):
        g["lr"] = lr


def copy_full_(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into ``target``, or its dim-0 piece into a sharded ``target``'s shard."""
    if is_sharded(target):
        mesh = target.device_mesh
        full, target = shard_rows(full, mesh.size(), mesh.get_local_rank()), target.to_local()
    target.copy_(full.to(target.dtype))
