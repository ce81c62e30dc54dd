"""PyTorch backend (CUDA, Ascend through torch-npu, CPU): the surface ``backends.get("torch")`` returns.

    init_distributed(parallel)      devices and process groups from the launcher
    MoELayer                        router → dispatcher → experts
    build_model(cfg, ctx)           the PanGu-Sigma-style model
    train(cfg, resume=False)        the pretraining loop
    save_checkpoint / load_checkpoint
    record_trace(checkpoint, out, …) a routing trace of a checkpoint for the placement planners
"""
from backends.torch.distributed import init_distributed
from backends.torch.moe_layer import MoELayer
# Imported here, before ``train`` below is defined: the import system binds a submodule to its package's
# attribute of the same name when it first loads it, which would otherwise replace the function ``train``
# with the module ``backends.torch.train`` the first time a caller imported it.
import backends.torch.train  # noqa: E402,F401  isort: skip


def train(cfg, resume: bool = False):
    from backends.torch.liveness import rank_failures_reported
    from backends.torch.train import train as _train

    with rank_failures_reported():      # a stalled or dead peer: one line naming it, exit 2 (docs/reliability.md)
        return _train(cfg, resume)


def build_model(cfg, ctx):
    from backends.torch.train import build_model as _build

    return _build(cfg, ctx)


def save_checkpoint(*args, **kwargs):
    from backends.torch.checkpoint import save_checkpoint as _save

    return _save(*args, **kwargs)


def load_checkpoint(*args, **kwargs):
    from backends.torch.checkpoint import load_checkpoint as _load

    return _load(*args, **kwargs)


def record_trace(*args, **kwargs):
    from backends.torch.trace import record_trace as _record

    return _record(*args, **kwargs)


__all__ = ["MoELayer", "build_model", "init_distributed", "load_checkpoint", "record_trace", "save_checkpoint", "train"]
