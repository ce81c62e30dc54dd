"""``locmoe export --format hf CHECKPOINT OUT``: a directory ``transformers.AutoModelForCausalLM`` loads as
Qwen2-MoE computing exactly our model (``hf_config.py`` says why that architecture, ``hf_weights.py`` how
the tensors map). Framework-free; written atomically (complete or not at all).

    OUT/config.json              Qwen2MoeConfig
    OUT/model.safetensors        fp32 weights, the Hub's per-expert names
    OUT/generation_config.json   greedy, EOS / pad ids
    OUT/tokenizer.json           the byte-level tokenizer, or the run's tokenizers JSON file
    OUT/tokenizer_config.json    PreTrainedTokenizerFast
    OUT/locmoe.json              what the way back (``locmoe convert --from hf``) needs and transformers does
                                 not: our job config, the layout, the routers' capacity state
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from locmoe import __version__
from locmoe.atomic_io import atomic_directory, writing
from locmoe.checkpoint.directory import TOKENIZER_FILE, load_state, resolve
from locmoe.checkpoint.sharded_weights import model_tensors
from locmoe.config import config_from_dict
from locmoe.export.hf_config import HFFormatError, check_exportable, hf_config
from locmoe.export.hf_tokenizer import (
    byte_tokenizer_json,
    generation_config_json,
    special_tokens,
    tokenizer_config_json,
)
from locmoe.export.hf_weights import to_hf
from locmoe.model_spec import moe_layer_indices

META = "locmoe.json"
META_VERSION = 1


def is_hf_export(path: Path) -> bool:
    """A directory this writer made (so it may be replaced)."""
    return (path / META).is_file() and (path / "config.json").is_file()


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the Hugging Face directory of ``checkpoint`` (a checkpoint or a run's out_dir)."""
    path = resolve(checkpoint)
    state = load_state(path)
    cfg = config_from_dict(state["config"])
    check_exportable(cfg)
    out = Path(out_dir)
    if out.resolve() == path.resolve() or out.resolve() in path.resolve().parents:
        raise HFFormatError(f"export directory {out} holds the checkpoint {path}; choose another one")
    tokenizer = _tokenizer_text(cfg, path)
    specials = special_tokens(tokenizer)
    with model_tensors(path) as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}
    tensors = to_hf(cfg, weights)
    meta = {
        "format_version": META_VERSION,
        "locmoe_version": __version__,
        "step": state["step"],
        "config": state["config"],
        "layout": state["layout"],
        "source": str(path),
        "router_state": {
            key: _floats(weights.get(key))
            for key in (f"layers.{i}.moe.router.angle_ema" for i in moe_layer_indices(cfg.model))
        },
    }
    with atomic_directory(out, replaceable=is_hf_export, what="Hugging Face export") as tmp:
        _write(tmp / "config.json", json.dumps(hf_config(cfg, specials["eos_token_id"]), indent=2) + "\n")
        _write(tmp / "generation_config.json", generation_config_json(specials))
        _write(tmp / "tokenizer.json", tokenizer)
        _write(
            tmp / "tokenizer_config.json",
            tokenizer_config_json(cfg.model.max_seq_len, specials, cfg.data.tokenizer == "byte"),
        )
        _write(tmp / META, json.dumps(meta, indent=1, allow_nan=False) + "\n")
        with writing(tmp / "model.safetensors"):
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o644)  # safetensors writes 0600; an export is for sharing
    return out


def _tokenizer_text(cfg, checkpoint: Path) -> str:
    """The byte-level tokenizer, or the run's tokenizers JSON (the checkpoint's copy, else data.tokenizer)."""
    spec = cfg.data.tokenizer
    if spec == "byte":
        return byte_tokenizer_json()
    for candidate in (checkpoint / TOKENIZER_FILE, Path(spec), Path(spec) / TOKENIZER_FILE):  # a folder's file
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise HFFormatError(
        f"data.tokenizer = {spec!r}: the checkpoint holds no {TOKENIZER_FILE} and the file is not "
        "found; the export needs the tokenizer"
    )


def _floats(a: np.ndarray | None) -> list | None:
    """Exact JSON of a float64 vector (repr round-trips), NaN as null."""
    if a is None:
        return None
    return [None if math.isnan(x) else float(x) for x in np.asarray(a, dtype=np.float64).tolist()]


def _write(path: Path, text: str) -> None:
    with writing(path):
        path.write_text(text, encoding="utf-8")
