"""Routing traces: which experts every token chose at every MoE layer, recorded from a model.

Recording (the model code calls this; nothing else is needed)::

    from locmoe.placement.trace import TraceWriter, fingerprint_from_config

    writer = TraceWriter(fingerprint_from_config(cfg), source={"checkpoint": path, "corpus": name})
    for batch in batches:                       # every forward pass ...
        for layer, moe in model.moe_layers():  # ... calls add() once for EVERY MoE layer,
            writer.add(layer, moe.last_expert_ids.cpu().numpy())   # [T, k], same T tokens, same order
    writer.save("trace.npz")

``layer`` is the model's block index and must be one of ``fingerprint["moe_layers"]``; ``expert_ids`` is
``[T, k]`` (``[T]`` when k = 1) integer expert ids in ``[0, num_experts)``, the router's choices *before*
capacity (a dropped copy still records its choice). Row t of every layer must be the same token: the
affinity between consecutive layers is read row by row. ``save`` checks that every layer got the same
number of tokens and writes one compressed ``.npz`` file atomically: arrays ``layer_<i>`` (``[T, k]``,
i = the MoE layer ordinal; uint8 when E ≤ 256, uint16 when E ≤ 65536; read back as int32) and ``meta``
(a JSON string: format version, fingerprint, source).

Reading: ``load_trace(path, expect=fingerprint)`` returns a :class:`RoutingTrace`; a missing or corrupt
file, or a trace whose fingerprint disagrees with ``expect`` (a trace from another model), raises
:class:`TraceError` naming what is wrong.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from locmoe.atomic_io import atomic_write_bytes
from locmoe.errors import LocMoEError
from locmoe.model_spec import moe_layer_indices

TRACE_FORMAT_VERSION = 1
FINGERPRINT_KEYS = ("num_experts", "top_k", "moe_layers", "router_kind", "d_model", "vocab_size")


class TraceError(LocMoEError):
    """A routing trace that is missing, corrupt, inconsistent, or recorded from another model."""


@dataclass
class RoutingTrace:
    """Per MoE layer, every token's chosen experts.

    Attributes:
        fingerprint: the model the trace was recorded from (keys :data:`FINGERPRINT_KEYS`).
        layers: one ``[T, k]`` int32 array per MoE layer, in ``fingerprint["moe_layers"]`` order.
        source: free-form provenance (checkpoint, corpus, step, ...).
    """

    fingerprint: dict
    layers: list[np.ndarray]
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        self.fingerprint = check_fingerprint(self.fingerprint)
        self.layers = [_as_choices(a, self.fingerprint, f"layer {i}") for i, a in enumerate(self.layers)]
        if len(self.layers) != len(self.fingerprint["moe_layers"]):
            raise TraceError(
                f"trace has {len(self.layers)} layers of choices but the fingerprint lists "
                f"{len(self.fingerprint['moe_layers'])} MoE layers {self.fingerprint['moe_layers']}"
            )
        counts = {len(a) for a in self.layers}
        if len(counts) > 1:
            raise TraceError(
                f"every MoE layer must hold the same tokens; token counts per layer are {[len(a) for a in self.layers]}"
            )

    @property
    def num_experts(self) -> int:
        return int(self.fingerprint["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.fingerprint["top_k"])

    @property
    def moe_layers(self) -> list[int]:
        return list(self.fingerprint["moe_layers"])

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_tokens(self) -> int:
        return len(self.layers[0]) if self.layers else 0

    def expert_load(self) -> np.ndarray:
        """[L, E] token copies routed to each expert of each MoE layer."""
        return np.stack([np.bincount(a.ravel(), minlength=self.num_experts) for a in self.layers])

    def head(self, max_tokens: int) -> "RoutingTrace":
        """The first ``max_tokens`` tokens of every layer (a smaller trace for a quick plan)."""
        return RoutingTrace(self.fingerprint, [a[:max_tokens] for a in self.layers], dict(self.source))

    def save(self, path: str | Path) -> Path:
        """Write the trace as one ``.npz`` file, atomically (complete under its name or not at all)."""
        meta = {"format_version": TRACE_FORMAT_VERSION, "fingerprint": self.fingerprint, "source": self.source}
        store = np.uint8 if self.num_experts <= 256 else np.uint16 if self.num_experts <= 65536 else np.int32
        arrays = {f"layer_{i}": a.astype(store) for i, a in enumerate(self.layers)}  # compact on disk
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(meta, default=_plain)), **arrays)
        return atomic_write_bytes(path, buf.getvalue())


class TraceWriter:
    """Accumulates each MoE layer's choices batch by batch; ``save`` writes one trace file."""

    def __init__(self, fingerprint: Mapping[str, Any], source: Mapping[str, Any] | None = None):
        self.fingerprint = check_fingerprint(dict(fingerprint))
        self.source = dict(source or {})
        self._ordinal = {int(layer): i for i, layer in enumerate(self.fingerprint["moe_layers"])}
        self._chunks: list[list[np.ndarray]] = [[] for _ in self._ordinal]

    def add(self, layer: int, expert_ids: np.ndarray) -> None:
        """Append one batch of ``layer``'s choices: ``expert_ids`` [T, k] (or [T] when k = 1)."""
        if int(layer) not in self._ordinal:
            raise TraceError(
                f"layer {layer} is not an MoE layer of this model; moe_layers = {self.fingerprint['moe_layers']}"
            )
        self._chunks[self._ordinal[int(layer)]].append(
            _as_choices(np.asarray(expert_ids), self.fingerprint, f"layer {layer}")
        )

    def tokens_per_layer(self) -> list[int]:
        return [sum(len(c) for c in chunks) for chunks in self._chunks]

    def trace(self) -> RoutingTrace:
        """The trace recorded so far (raises :class:`TraceError` if the layers got different token counts)."""
        k = int(self.fingerprint["top_k"])
        layers = [np.concatenate(c) if c else np.zeros((0, k), np.int32) for c in self._chunks]
        return RoutingTrace(self.fingerprint, layers, self.source)

    def save(self, path: str | Path) -> Path:
        return self.trace().save(path)


def load_trace(path: str | Path, expect: Mapping[str, Any] | None = None) -> RoutingTrace:
    """Read a trace file; ``expect`` (a fingerprint, any subset of its keys) must match the trace's."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"routing trace {path} not found")
    meta, arrays = _read_npz(path)
    version = meta.get("format_version")
    if version != TRACE_FORMAT_VERSION:
        raise TraceError(
            f"{path}: trace format_version {version!r} is not supported; this locmoe reads "
            f"version {TRACE_FORMAT_VERSION}"
        )
    fingerprint = meta.get("fingerprint")
    if not isinstance(fingerprint, dict):
        raise TraceError(f"{path}: 'meta' has no fingerprint object; the file is corrupt")
    n = len(fingerprint.get("moe_layers") or [])
    missing = [f"layer_{i}" for i in range(n) if f"layer_{i}" not in arrays]
    if missing:
        raise TraceError(f"{path} lacks arrays {missing}; the file is truncated or corrupt")
    layers = [arrays[f"layer_{i}"] for i in range(n)]
    try:
        trace = RoutingTrace(fingerprint, layers, meta.get("source", {}))
    except TraceError as err:
        raise TraceError(f"{path}: {err}") from None
    if expect is not None:
        check_same_model(trace.fingerprint, expect, str(path))
    return trace


def _read_npz(path: Path) -> tuple[dict, dict]:
    """(meta dict, name -> array) of a trace file; any read or parse failure is a :class:`TraceError`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
        raise TraceError(
            f"{path} is not a readable routing trace ({type(err).__name__}: {err}); the file "
            "is corrupt or not an .npz trace"
        ) from None
    if "meta" not in arrays:
        raise TraceError(f"{path} has no 'meta' entry; it is not a locmoe routing trace")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as err:
        raise TraceError(f"{path}: 'meta' is not valid JSON ({err}); the file is corrupt") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{path}: 'meta' is not a JSON object; the file is corrupt")
    return meta, arrays


def expected_fingerprint(text: str) -> dict | None:
    """The fingerprint a trace must match (``--expect``): from a router export directory, its manifest.json,
    or inline JSON; None for an empty text."""
    if not text:
        return None
    path = Path(text)
    if path.is_dir():
        path = path / "manifest.json"
    if path.is_file():
        from locmoe.export.manifest import RouterManifest  # here: recording a trace imports no export code

        m = RouterManifest.from_file(path)
        return {
            "num_experts": m.num_experts,
            "top_k": m.top_k,
            "moe_layers": m.moe_layers,
            "router_kind": m.router_kind,
            "d_model": m.d_model,
            "vocab_size": m.vocab_size,
        }
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise TraceError(f"--expect {text!r} is neither a router export, a manifest.json nor a JSON object") from None
    if not isinstance(data, dict):
        raise TraceError(f"--expect {text!r}: expected a JSON object of fingerprint keys")
    return data


def check_same_model(found: Mapping[str, Any], expect: Mapping[str, Any], where: str = "trace") -> None:
    """Raise :class:`TraceError` listing every key of ``expect`` on which ``found`` differs."""
    diffs = [
        f"{k} = {found.get(k)!r} in the trace, {_norm(v)!r} expected"
        for k, v in expect.items()
        if _norm(found.get(k)) != _norm(v)
    ]
    if diffs:
        raise TraceError(f"{where} is a trace from another model: " + "; ".join(diffs))


def check_fingerprint(fp: Mapping[str, Any]) -> dict:
    """Validate a model fingerprint: every key of :data:`FINGERPRINT_KEYS`, sane values."""
    missing = [k for k in FINGERPRINT_KEYS if k not in fp]
    if missing:
        raise TraceError(f"fingerprint lacks {missing}; it needs {list(FINGERPRINT_KEYS)}")
    fp = {k: _norm(v) for k, v in fp.items()}
    E, k = fp["num_experts"], fp["top_k"]
    if not (isinstance(E, int) and E >= 1 and isinstance(k, int) and 1 <= k <= E):
        raise TraceError(f"fingerprint num_experts = {E!r}, top_k = {k!r}: need integers 1 <= top_k <= num_experts")
    layers = fp["moe_layers"]
    if not isinstance(layers, list) or not layers or len(set(layers)) != len(layers):
        raise TraceError(f"fingerprint moe_layers = {layers!r}: need a non-empty list of distinct layer indices")
    return fp


def fingerprint_from_config(cfg) -> dict:
    """The fingerprint of the model a resolved ``JobConfig`` builds."""
    m, moe = cfg.model, cfg.moe
    return {
        "num_experts": moe.num_experts,
        "top_k": moe.router.top_k,
        "moe_layers": moe_layer_indices(m),
        "router_kind": moe.router.kind,
        "d_model": m.d_model,
        "vocab_size": m.vocab_size,
    }


def _as_choices(a: np.ndarray, fp: dict, where: str) -> np.ndarray:
    """Check one layer's choices: integer ``[T, k]`` in ``[0, E)``; returns them as int32."""
    a = np.asarray(a)
    k, E = fp["top_k"], fp["num_experts"]
    if a.ndim == 1 and k == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != k:
        raise TraceError(f"{where}: expert ids of shape {a.shape}; expected [T, {k}] (top_k = {k})")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TraceError(f"{where}: expert ids of dtype {a.dtype}; expected integers")
    if a.size and (a.min() < 0 or a.max() >= E):
        raise TraceError(f"{where}: expert ids span [{a.min()}, {a.max()}]; allowed [0, {E})")
    return np.ascontiguousarray(a, dtype=np.int32)


def _norm(v: Any) -> Any:
    """JSON-comparable form: tuples and arrays become lists, numpy scalars plain numbers."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_norm(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
