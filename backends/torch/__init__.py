"""PyTorch backend (CUDA, Ascend through torch-npu, CPU): a :class:`locmoe.backend_api.Backend`,
:class:`~locmoe.backend_api.TraceRecorder` and :class:`~locmoe.backend_api.Serving`, as ``backends.get("torch")``
returns it.

Nothing is imported here: the functions below import their module when called, so that importing one
submodule (``backends.torch.moe_layer``, say) does not load the training loop and the model with it.
The modules, for a reader: ``moe_layer`` (router → dispatcher → experts), ``distributed`` (devices and
process groups from the launcher), ``train`` (the pretraining loop, ``build_model``), ``checkpoint``,
``trace``, ``inference/`` (serving).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Sequence

    from locmoe.backend_api import CheckpointIO, Server
    from locmoe.config.schema import JobConfig


def pretrain(cfg: JobConfig, resume: bool = False) -> dict:
    from backends.torch.liveness import rank_failures_reported
    from backends.torch.train import train

    with rank_failures_reported():  # a stalled or dead peer: one line naming it, exit 2 (docs/reliability.md)
        return train(cfg, resume)


def checkpoint_io() -> CheckpointIO:
    from backends.torch import checkpoint

    return checkpoint


def record_trace(
    checkpoint: str | Path, out: str | Path, tokens: int, batch_size: int, data_overrides: Sequence[str] = ()
) -> Path:
    from backends.torch.trace import record_trace as record

    return record(checkpoint, out, tokens, batch_size, data_overrides)


def server() -> Server:
    from backends.torch.inference import server

    # the module's functions take back the handles its own ``load``/``options`` return (InferenceModel,
    # ServeOptions), narrower than the protocol's opaque ``ServedModel``/``object`` parameters
    return cast("Server", server)
