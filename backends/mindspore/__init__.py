"""MindSpore backend (Ascend, CPU): a :class:`locmoe.backend_api.Backend`, as ``backends.get("mindspore")``
returns it, mirroring ``backends.torch`` module for module and name for name.

Nothing is imported here: the functions below import their module when called, so that importing one
submodule does not load the training loop and the model with it. On CPU the expert-parallel all-to-all is
emulated exactly with AllGather (``collectives``), so the whole MoE layer and training run and are tested
under msrun without an Ascend device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from locmoe.backend_api import CheckpointIO, Server
    from locmoe.config.schema import JobConfig


def pretrain(cfg: JobConfig, resume: bool = False) -> dict:
    from backends.mindspore.liveness import rank_failures_reported
    from backends.mindspore.train import train

    with rank_failures_reported(cfg.train.out_dir):  # a stalled peer: one line naming it, exit 2
        return train(cfg, resume)


def checkpoint_io() -> CheckpointIO:
    from backends.mindspore import checkpoint

    return checkpoint


def server() -> Server:
    """MindSpore has no serving (``locmoe generate`` and ``locmoe bench`` run on the torch backend)."""
    from locmoe.inference.errors import InferenceError

    raise InferenceError(
        "the MindSpore backend has no serving: `locmoe generate` and `locmoe bench` serve with the torch backend"
    )
