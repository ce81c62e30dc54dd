"""What locmoe's commands call on a framework backend: the contract ``backends.torch`` and
``backends.mindspore`` keep, written as types rather than prose.

``backends.get(name)`` returns a :class:`Backend` (the backend's package; a module meets a Protocol by
having the functions). ``locmoe train`` calls :meth:`Backend.pretrain`, ``locmoe convert`` reads one backend's
:class:`CheckpointIO` and writes the other's; ``locmoe trace`` needs a :class:`TraceRecorder`, which only
the torch backend is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, runtime_checkable

from locmoe.config.schema import JobConfig

if TYPE_CHECKING:
    from locmoe.data import Corpus
    from locmoe.parallel.context import DistContext


@runtime_checkable
class CheckpointIO(Protocol):
    """A backend's own files of one rank in a checkpoint directory: the optimiser's state and the RNG states.
    Everything else of a checkpoint (weights, ``train_state.json``) is framework-neutral
    (:mod:`locmoe.checkpoint.directory`); these hold numpy data in and out, so two backends convert by a copy."""

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


# Serving (``locmoe generate``, ``locmoe bench``) ----------------------------------------------------------------


@runtime_checkable
class ServedModel(Protocol):
    """A checkpoint loaded for serving by :meth:`Server.load`, its experts spread over the launched processes."""

    cfg: JobConfig  # the checkpoint's job (its capacity rule as served)
    checkpoint: Path  # the resolved checkpoint directory, where serving finds the run's tokenizer copy

    @property
    def context(self) -> int:
        """The longest sequence it takes (``model.max_seq_len``)."""
        ...

    @property
    def rank(self) -> int:
        """This process's index among those serving the model (index 0 prints and writes)."""
        ...

    @property
    def world_size(self) -> int:
        """How many processes serve the model."""
        ...


@runtime_checkable
class Server(Protocol):
    """A backend's serving, as ``backends.get(name).server()`` returns it. Every call but :meth:`options` and
    :meth:`device_type` is collective over the processes the launcher started (torchrun)."""

    def options(self, mode: str, chunks: int, kernel: str, profile: str | Path | None) -> object:
        """How the MoE layers will run (plain / chunked / pipelined, chunk count, expert kernel, the calibration
        profile file of ``locmoe bench calibrate``), checked now."""
        ...

    def load(
        self,
        checkpoint: str | Path,
        router_dir: str | Path,
        device: str,
        dtype: str | None,
        capacity: str,
        options: object,
    ) -> ServedModel:
        """The checkpoint's model with the exported routers of ``router_dir``, run as ``options`` say."""
        ...

    def generate(
        self,
        model: ServedModel,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        top_p: float | None,
        temperature: float,
        seed: int,
        domain: int | None,
        eos_id: int | None,
        batch_size: int,
        cuda_graph: bool,
        kv_cache: bool,
    ) -> tuple[list[list[int]], float | None]:
        """Every prompt's new tokens (greedy unless ``top_p``) and, with ``kv_cache``, the time to first token."""
        ...

    def prefill(self, model: ServedModel, options: object, lengths: Sequence[int], batch: int, reps: int) -> list[dict]:
        """Prefill tokens/s per prompt length, plain and (unless plain) as ``options`` say: one row each."""
        ...

    def device_type(self, device: str) -> str:
        """The kind of device that ``device`` (auto / cpu / cuda) resolves to in this process."""
        ...

    def calibrate(
        self,
        experts: int,
        d_model: int,
        d_expert: int,
        rows: Sequence[int],
        reps: int,
        device: str,
        dtype: str | None,
        out: str | Path,
        progress: Callable[[str], None],
    ) -> Path | None:
        """Measure this device's expert kernels, copies and all-to-all and write the fitted profile to ``out``;
        returns it on process 0 (which alone reports ``progress``), None on the others."""
        ...

    def shutdown(self) -> None:
        """Leave the process group that serving joined, if any."""
        ...


@runtime_checkable
class Serving(Protocol):
    """A backend package that serves (the torch backend; MindSpore's ``server`` refuses with one line)."""

    def server(self) -> Server:
        """This backend's :class:`Server`."""
        ...


# ----------------------------------------------------------------------------- the training loop's backend


@dataclass(frozen=True)
class TrainerFacts:
    """What the one training loop (``locmoe.training.loop``) knows of a built :class:`Trainer`."""

    ctx: DistContext  # ranks, this rank, the layout (``is_main``, ``world_size``)
    backend: str  # "torch" or "mindspore": written into each checkpoint
    corpus: Corpus  # the training text (the run's first line describes it)
    parameters: int  # parameters on this rank
    device: str  # the first line's note on the device and the step's mode
    tokens_per_step: int  # tokens of one optimiser step over all ranks
    moe_layers: list  # indices of the MoE blocks (their expert loads are logged)
    peak_flops: Optional[float] = None  # one device's peak, for the MFU of logged steps (None: no MFU)


@runtime_checkable
class Trainer(Protocol):
    """One backend's side of ``locmoe train``: the loop (``locmoe.training.loop.run``) calls ``prepare``,
    ``build_model``, ``load_checkpoint`` (resuming), ``make_step``, then per step ``step`` and, on the steps that
    log, validate or save, the rest; ``facts`` is known once the model is built."""

    @property
    def facts(self) -> TrainerFacts:
        """What the loop knows of the built trainer (read after ``build_model``)."""
        ...

    def prepare(self, resume: bool) -> Optional[Path]:
        """Check every input (config, data, the checkpoint to resume) before anything is written, and take the
        run directory (rank 0); the checkpoint to resume from, or None."""
        ...

    def build_model(self) -> None:
        """Seed, build the model, deal the data to it (``data.placement``) and make the optimiser."""
        ...

    def load_checkpoint(self, path: Path) -> int:
        """Restore the weights, optimiser and RNG states of a checkpoint; the step to continue from."""
        ...

    def make_step(self, log: Callable[[str], None]) -> None:
        """Make the step function (a CUDA graph, a compiled step or eager); its notes go to ``log``."""
        ...

    def step(self, step: int) -> Any:
        """One optimiser step at ``step``'s learning rate; its outputs stay on the device (no host sync)."""
        ...

    def to_host(self, outputs: Any) -> tuple[float, float, float]:
        """(LM loss, auxiliary objective) averaged over the ranks, and the gradient norm, of a step's outputs."""
        ...

    def moe_statistics(self, outputs: Any) -> tuple[list[dict], list, list]:
        """Per MoE layer: ``MoEMetrics.summary()``, expert load [E] and capacity [E] (numpy) of a step's outputs."""
        ...

    def validate(self) -> float:
        """The validation loss over ``train.eval_batches`` batches, averaged over the ranks."""
        ...

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        """The means of ``values`` over all ranks (a collective every rank calls)."""
        ...

    def barrier(self) -> None:
        """All ranks meet (a no-op in one process)."""
        ...

    def check_weights_finite(self, step: int) -> None:
        """Before a checkpoint: every rank's weights and moments are finite, or every rank raises NonFiniteError."""
        ...

    def write_rank_files(self, tmp: Path, step: int) -> None:
        """This rank's files of step ``step``'s checkpoint into ``tmp`` (rank 0 also the model's weights)."""
        ...
