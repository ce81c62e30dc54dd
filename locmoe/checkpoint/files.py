"""The per-rank files of a format-2 checkpoint, the same for both backends and read without unpickling:

    optimizer_rank{r}.safetensors   every tensor of rank r's optimiser state, named ``<key>.<parameter name>``
                                    (AdamW: ``exp_avg.<name>``, ``exp_avg_sq.<name>``)
    optimizer_rank{r}.json          per parameter the scalar state (AdamW's step count), the dtype a scalar was
                                    a framework tensor of, and the param groups' hyper-parameters with their
                                    parameters by name
    rng_rank{r}.json                numpy's state tuple, Python's ``random`` state, and a framework generator's
                                    state as a list of bytes (torch: ``torch``, ``cuda``)

Framework-free: the backends turn their optimiser's ``state_dict`` into (tensors, scalars, groups) and back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from locmoe.atomic_io import write_text, writing
from locmoe.checkpoint.directory import CheckpointError, read_json, safe_tensors

OPTIMIZER_TENSORS = "optimizer_rank{rank}.safetensors"
OPTIMIZER_META = "optimizer_rank{rank}.json"
RNG_FILE = "rng_rank{rank}.json"
MOMENTS = ("exp_avg", "exp_avg_sq")


def save_tensor_file(save, tensors: dict, file: Path) -> None:
    """``save(tensors, str(file))`` (a safetensors ``save_file``) with write errors that name the file."""
    with writing(file):
        save(tensors, str(file))


def write_optimizer_files(
    path: Path,
    rank: int,
    tensors: dict,
    scalars: dict[str, dict],
    groups: list[dict],
    scalar_dtypes: dict[str, str],
    save,
) -> None:
    """Rank ``rank``'s optimiser state into ``path``. ``tensors``: {"<key>.<name>": tensor}, written with
    ``save`` (``safetensors.torch.save_file`` or ``safetensors.numpy.save_file``); ``scalars``:
    {name: {key: number}}; ``groups``: hyper-parameters with ``params`` as names; ``scalar_dtypes``: {key:
    dtype} of scalars that were 0-d framework tensors (torch's step count is a float32 tensor)."""
    save_tensor_file(save, tensors, path / OPTIMIZER_TENSORS.format(rank=rank))
    meta = {"scalars": scalars, "scalar_dtypes": scalar_dtypes, "param_groups": groups}
    write_text(path / OPTIMIZER_META.format(rank=rank), json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_optimizer_meta(path: Path, rank: int) -> dict:
    """``optimizer_rank{r}.json``, checked for shape."""
    file = path / OPTIMIZER_META.format(rank=rank)
    meta = read_json(file)
    ok = (
        isinstance(meta, dict)
        and isinstance(meta.get("scalars"), dict)
        and all(isinstance(v, dict) for v in meta["scalars"].values())
        and isinstance(meta.get("scalar_dtypes"), dict)
        and isinstance(meta.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in meta["param_groups"])
    )
    if not ok:
        raise CheckpointError(
            f"{file}: expected {{scalars: {{name: {{key: number}}}}, scalar_dtypes: {{}}, "
            "param_groups: [{..., params: [names]}]}; the file is corrupt or from elsewhere"
        )
    return meta


def read_optimizer_tensors(path: Path, rank: int, framework: str = "np") -> dict[str, dict[str, Any]]:
    """{key: {parameter name: tensor}} from ``optimizer_rank{r}.safetensors``."""
    file = path / OPTIMIZER_TENSORS.format(rank=rank)
    out: dict[str, dict[str, Any]] = {}
    with safe_tensors(file, framework) as f:
        for full in f.keys():
            key, sep, name = full.partition(".")
            if not sep:
                raise CheckpointError(f"{file}: tensor {full!r} is not named '<state key>.<parameter name>'")
            out.setdefault(key, {})[name] = f.get_tensor(full)
    return out


def read_adamw(path: Path, rank: int) -> dict:
    """Rank ``rank``'s AdamW state as {"step", "exp_avg": {name: array}, "exp_avg_sq": {...}} (numpy), the
    framework-neutral form ``locmoe convert`` moves between backends."""
    meta, tensors = read_optimizer_meta(path, rank), read_optimizer_tensors(path, rank)
    steps = [s.get("step", 0) for s in meta["scalars"].values()]
    if not all(isinstance(s, (int, float)) and s >= 0 for s in steps):
        raise CheckpointError(f"{path / OPTIMIZER_META.format(rank=rank)}: step counts must be numbers >= 0")
    out: dict[str, Any] = {"step": int(max(steps, default=0))}
    for key in MOMENTS:
        out[key] = {n: np.asarray(t, dtype=np.float32) for n, t in tensors.get(key, {}).items()}
    return out


# ----------------------------------------------------------------------------- RNG states


def rng_to_json(numpy_state: tuple, python_state: tuple, **framework: Any) -> dict:
    """numpy's ``get_state()`` and Python's ``random.getstate()`` as JSON; ``framework``: extra entries
    (a generator state as a list of byte values, or None)."""
    kind, keys, pos, has_gauss, gauss = numpy_state
    version, internal, gauss_next = python_state
    return {
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
        **framework,
    }


def write_rng_file(state: dict, path: Path, rank: int) -> None:
    write_text(path / RNG_FILE.format(rank=rank), json.dumps(state) + "\n")


def read_rng_file(path: Path, rank: int) -> tuple[tuple, tuple, dict]:
    """(numpy state, python state, the other entries) of ``rng_rank{r}.json``, checked for shape, as
    ``np.random.set_state`` and ``random.setstate`` take them."""
    file = path / RNG_FILE.format(rank=rank)
    state = read_json(file)
    try:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        version, internal, gauss_next = state["python"]
        ok = (
            kind == "MT19937"
            and len(keys) == 624
            and all(isinstance(k, int) and 0 <= k < 2**32 for k in keys)
            and isinstance(pos, int)
            and has_gauss in (0, 1)
            and isinstance(gauss, float)
            and isinstance(version, int)
            and len(internal) == 625
            and all(isinstance(i, int) for i in internal)
            and (gauss_next is None or isinstance(gauss_next, float))
        )
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(
            f"{file}: not an RNG state (numpy: [MT19937, 624 keys, pos, has_gauss, gauss], "
            "python: [version, 625 ints, gauss_next]); the file is corrupt or from elsewhere"
        )
    rest = {k: v for k, v in state.items() if k not in ("numpy", "python")}
    return (
        (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss),
        (version, tuple(internal), gauss_next),
        rest,
    )


def byte_list(values: Any, file: Path, what: str) -> list[int]:
    """A generator state stored as a JSON list of byte values, checked."""
    if not isinstance(values, list) or not all(isinstance(v, int) and 0 <= v < 256 for v in values):
        raise CheckpointError(f"{file}: {what} must be a list of byte values (0-255)")
    return values
