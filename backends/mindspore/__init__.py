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
# Imported here, before ``train`` below is defined: the import system binds a submodule to its package's
# attribute of the same name when it first loads it, which would otherwise replace the function ``train``
# with the module ``backends.mindspore.train`` the first time a caller imported it.
import backends.mindspore.train  # noqa: E402,F401  isort: skip


def train(cfg, resume: bool = False):
    from backends.mindspore.liveness import rank_failures_reported
    from backends.mindspore.train import train as _train

    with rank_failures_reported(cfg.train.out_dir):     # a stalled peer: one line naming it, exit 2
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
