"""MindSpore backend (Ascend, CPU): the surface ``backends.get("mindspore")`` returns, mirroring
``backends.torch`` module for module and name for name.

    init_distributed(parallel)      device, PyNative mode, msrun communication and groups
    MoELayer                        router → dispatcher → experts

On CPU the expert-parallel all-to-all is emulated exactly with AllGather (``collectives``), so the whole MoE
layer runs and is tested under msrun without an Ascend device. The model, training loop and checkpoints
follow in later changes.
"""
from backends.mindspore.distributed import init_distributed
from backends.mindspore.moe_layer import MoELayer

__all__ = ["MoELayer", "init_distributed"]
