"""MindSpore backend (Ascend, CPU): the surface ``backends.get("mindspore")`` returns, mirroring
``backends.torch`` module for module and name for name.

    init_distributed(parallel)      device, PyNative mode, msrun communication and groups
    MoELayer                        router → dispatcher → experts
    build_model(cfg, ctx)           the PanGu-Sigma-style model (``models.pangu_sigma_mindspore``)
    train(cfg, resume=False)        the pretraining loop
    save_checkpoint / load_checkpoint

On CPU the expert-parallel all-to-all is emulated exactly with AllGather (``collectives``), so the whole MoE
layer and training run and are tested under msrun without an Ascend device.
"""
from backends.mindspore.distributed import init_distributed
from backends.mindspore.moe_layer import MoELayer


def train(cfg, resume: bool = False):
    from backends.mindspore.train import train as _train

    return _train(cfg, resume)


def build_model(cfg, ctx):
    from backends.mindspore.train import build_model as _build

    return _build(cfg, ctx)


def save_checkpoint(*args, **kwargs):
    from backends.mindspore.checkpoint import save_checkpoint as _save

    return _save(*args, **kwargs)


def load_checkpoint(*args, **kwargs):
    from backends.mindspore.checkpoint import load_checkpoint as _load

    return _load(*args, **kwargs)


__all__ = ["MoELayer", "build_model", "init_distributed", "load_checkpoint", "save_checkpoint", "train"]
