"""``locmoe convert --from hf DIR OUT``: a Qwen2-MoE directory (ours from ``locmoe export --format hf``, or
any that LocMoE's model computes exactly) as our checkpoint ``OUT/checkpoints/step_N/`` plus its router
export ``OUT/router``, so ``locmoe generate OUT OUT/router`` serves it. Framework-free.

Nothing in DIR is unpickled (``hf_files.py``). Our own export carries ``locmoe.json`` (the job config, the
layout, the routers' capacity state): the round trip then returns byte-identical weights. The router gate
comes back as GrAP when the HF router weight is exactly GrAP's matrix over the temperature; a learned gate
returns unchanged when the temperature is 1 (the default) and otherwise with the temperature folded in
(``gate_weight / temperature``, temperature 1: the same function). The checkpoint holds weights only (no
optimiser state): it serves, exports, and starts new training runs, it does not resume one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from locmoe import __version__
from locmoe.atomic_io import check_replaceable, write_text, writing
from locmoe.checkpoint.directory import TOKENIZER_FILE, list_checkpoints, seal, temp_dir
from locmoe.config import ConfigError, config_from_dict, config_to_dict
from locmoe.config.schema import JobConfig
from locmoe.export.hf_config import HFFormatError, model_fields_from_hf
from locmoe.export.hf_export import META
from locmoe.export.hf_files import read_json, read_weights
from locmoe.export.hf_tokenizer import is_byte_tokenizer
from locmoe.export.hf_weights import from_hf, router_weight
from locmoe.model_spec import moe_layer_indices

ONE_DEVICE = {"world_size": 1, "ep_size": 1, "nodes": 1, "devices_per_node": 1, "emulated": False}


def import_hf(directory: str | Path, out_dir: str | Path) -> Path:
    """Write our checkpoint (and ``out_dir/router``) of the HF model in ``directory``; returns the checkpoint."""
    src, out = Path(directory), Path(out_dir)
    if not src.is_dir():
        raise HFFormatError(f"{src} is not a directory (a Hugging Face model directory was expected)")
    if list_checkpoints(out) or (out / "router").exists():
        raise HFFormatError(f"{out} already holds checkpoints or a router export; choose an empty or new OUT_DIR")
    if out.exists() or out.is_symlink():
        check_replaceable(out, None, "converted checkpoint")
    hf = read_json(src / "config.json")
    if not isinstance(hf, dict):
        raise HFFormatError(f"{src / 'config.json'}: expected a JSON object")
    meta = read_json(src / META) if (src / META).is_file() else None
    cfg, step, layout = _job(hf, meta, src)
    weights = from_hf(cfg, read_weights(src), str(src))
    cfg = _restore_gate(cfg, weights)
    _add_router_state(cfg, weights, meta)
    tokenizer = _tokenizer(src, cfg)
    return _write(out, cfg, step, layout, weights, tokenizer, src)


def _job(hf: dict, meta: dict | None, src: Path) -> tuple[JobConfig, int, dict]:
    """Our config (from locmoe.json when present, checked against config.json), step and layout."""
    model, moe = model_fields_from_hf(hf, str(src / "config.json"))
    if meta is None:
        try:
            cfg = config_from_dict(
                {"name": src.name, "model": model, "moe": moe, "parallel": {"nodes": 1, "devices_per_node": 1}}
            )
        except ConfigError as err:
            raise HFFormatError(f"{src / 'config.json'} maps to an invalid LocMoE config: {err}") from None
        return cfg, 0, dict(ONE_DEVICE)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise HFFormatError(f"{src / META}: expected a JSON object with a 'config' object")
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as err:
        raise HFFormatError(f"{src / META}: its config is invalid: {err}") from None
    ours = dataclasses.asdict(cfg.model)
    wrong = [f"{k}: config.json {v!r}, locmoe.json {ours[k]!r}" for k, v in model.items() if ours[k] != v]
    wrong += [
        f"moe.{k}: config.json {moe[k]!r}, locmoe.json {getattr(cfg.moe, k)!r}"
        for k in ("num_experts", "d_expert")
        if getattr(cfg.moe, k) != moe[k]
    ]
    if moe["router"]["top_k"] != cfg.moe.router.top_k:
        wrong.append(f"top_k: config.json {moe['router']['top_k']}, locmoe.json {cfg.moe.router.top_k}")
    if wrong:
        raise HFFormatError(f"{src}: config.json and locmoe.json describe different models: " + "; ".join(wrong[:6]))
    step, layout = meta.get("step", 0), meta.get("layout") or dict(ONE_DEVICE)
    if not isinstance(step, int) or step < 0 or not isinstance(layout, dict):
        raise HFFormatError(f"{src / META}: 'step' must be a non-negative integer and 'layout' an object")
    return cfg, step, layout


def _restore_gate(cfg: JobConfig, w: dict) -> JobConfig:
    """GrAP if every router weight is GrAP's matrix over the temperature; a learned gate otherwise."""
    r = cfg.moe.router
    keys = [f"layers.{i}.moe.router.gate_weight" for i in moe_layer_indices(cfg.model)]
    if r.gate == "grap":
        grap = router_weight(cfg, None).T
        if all(np.array_equal(w[k], grap) for k in keys):
            for k in keys:
                del w[k]
            return cfg
    if r.gate == "dense" and r.temperature == 1.0:
        return cfg
    # the router was fine-tuned away from GrAP, or a temperature is folded into the weight: a learned gate
    return dataclasses.replace(
        cfg, moe=dataclasses.replace(cfg.moe, router=dataclasses.replace(r, gate="dense", temperature=1.0))
    )


def _add_router_state(cfg: JobConfig, w: dict, meta: dict | None) -> None:
    """The capacity bound's angle state (float64, NaN = not measured yet), from locmoe.json when it has it."""
    saved = (meta or {}).get("router_state") or {}
    for i in moe_layer_indices(cfg.model):
        key = f"layers.{i}.moe.router.angle_ema"
        values = saved.get(key)
        if values is None or len(values) != cfg.moe.num_experts:
            w[key] = np.full(cfg.moe.num_experts, np.nan)
        else:
            w[key] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _tokenizer(src: Path, cfg: JobConfig) -> str | None:
    """The tokenizers JSON to keep with the checkpoint; None when it is the byte-level one (or absent and
    the config says byte)."""
    file = src / "tokenizer.json"
    if not file.is_file():
        if cfg.data.tokenizer != "byte":
            raise HFFormatError(
                f"{src} has no tokenizer.json, and its model was trained with data.tokenizer = {cfg.data.tokenizer!r}"
            )
        return None
    text = file.read_text(encoding="utf-8")
    return None if is_byte_tokenizer(_json(text, file)) else text


def _json(text: str, file: Path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise HFFormatError(f"{file} is not valid JSON ({err})") from None


def _write(out: Path, cfg: JobConfig, step: int, layout: dict, weights: dict, tokenizer: str | None, src: Path) -> Path:
    """The sealed checkpoint, then the router export; nothing is left behind on an error."""
    from locmoe.export import export_checkpoint

    if tokenizer is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=TOKENIZER_FILE))
    elif cfg.data.tokenizer != "byte":
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer="byte"))
    created = not out.exists()
    tmp = temp_dir(out, step)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(tmp, remove_partial=False):
            tmp.mkdir(parents=True)
        with writing(tmp / "model.safetensors"):
            save_file({k: weights[k] for k in sorted(weights)}, str(tmp / "model.safetensors"))
        if tokenizer is not None:
            write_text(tmp / TOKENIZER_FILE, tokenizer)
        state = {
            "step": step,
            "config": config_to_dict(cfg),
            "layout": layout,
            "backend": "torch",
            "locmoe_version": __version__,
            "weights_only": True,
            "imported_from": {"path": str(src), "format": "hf"},
        }
        write_text(tmp / "train_state.json", json.dumps(state, indent=2) + "\n")
        ckpt = seal(out, step, {"backend": "torch"})
        export_checkpoint(ckpt, out / "router")
        return ckpt
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
