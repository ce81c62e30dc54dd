"""What locmoe's commands call on a framework backend: the contract ``backends.torch`` and
``backends.mindspore`` keep, written as types rather than prose.

``backends.get(name)`` returns a :class:`Backend` (the backend's package; a module meets a Protocol by
having the functions). ``locmoe train`` calls :meth:`Backend.pretrain`, ``locmoe convert`` reads one backend's
:class:`CheckpointIO` and writes the other's; ``locmoe trace`` needs a :class:`TraceRecorder`, which only
the torch backend is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from locmoe.config.schema import JobConfig


@runtime_checkable
class CheckpointIO(Protocol):
    """A backend's own files of one rank in a checkpoint directory: the optimiser's state and the RNG states.
    Everything else of a checkpoint (weights, ``train_state.json``) is framework-neutral
    (:mod:`locmoe.checkpointing`); these hold numpy data in and out, so two backends convert by a copy."""

    def read_optimizer(self, path: Path, rank: int, cfg: JobConfig) -> dict:
        """Rank ``rank``'s optimiser state under ``path``: hyper-parameters, step and moments as numpy."""
        ...

    def write_optimizer(self, state: dict, path: Path, rank: int, cfg: JobConfig) -> None:
        """Write a state of :meth:`read_optimizer`'s form as this backend's files for ``rank``."""
        ...

    def read_rng(self, path: Path, rank: int) -> dict:
        """Rank ``rank``'s RNG states (numpy's, Python's, and the framework's own if it has one)."""
        ...

    def write_rng(self, state: dict, path: Path, rank: int, seed: int) -> None:
        """Write RNG states; a framework generator the state lacks starts from ``seed``."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A framework backend package, as ``backends.get(name)`` returns it."""

    def pretrain(self, cfg: JobConfig, resume: bool = False) -> dict:
        """Run the pretraining loop of a resolved job (from its newest checkpoint with ``resume``); returns
        the last step's metrics. A stalled or dead peer ends it with one line naming the rank."""
        ...

    def checkpoint_io(self) -> CheckpointIO:
        """The reader and writer of this backend's per-rank checkpoint files."""
        ...


@runtime_checkable
class TraceRecorder(Protocol):
    """A backend that records routing traces of a checkpoint (the input of ``locmoe plan``)."""

    def record_trace(
        self, checkpoint: str | Path, out: str | Path, tokens: int, batch_size: int, data_overrides: Sequence[str] = ()
    ) -> Path:
        """Run the checkpoint's model over at least ``tokens`` tokens of its validation text (or the data
        that ``data_overrides``, ``data.FIELD=VALUE`` strings, select) and write each MoE layer's choices."""
        ...
