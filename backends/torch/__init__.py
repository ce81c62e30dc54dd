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


def train(cfg, resume: bool = False):
    from backends.torch.train import train as _train

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
