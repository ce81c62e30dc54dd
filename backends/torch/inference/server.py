"""The torch backend's :class:`locmoe.backend_api.Server`, as ``backends.get("torch").server()`` returns it: this
module (a module meets the Protocol by having the functions), each function a thin door into ``inference/``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from backends.torch.distributed import resolve_device
from backends.torch.distributed import shutdown as shutdown
from backends.torch.inference import decode, kv_generate
from backends.torch.inference.calibrate import calibrate_launched
from backends.torch.inference.loader import load_inference_model
from backends.torch.inference.model import InferenceModel
from backends.torch.inference.options import ServeOptions
from backends.torch.inference.prefill import prefill_rows
from locmoe.inference.profile import DeviceProfile

# the Protocol's prefill and calibrate are these functions themselves (no second signature to keep in step)
prefill = prefill_rows
calibrate = calibrate_launched


def options(mode: str, chunks: int, kernel: str, profile: str | Path | None) -> ServeOptions:
    loaded = DeviceProfile.load(profile) if profile else None
    return ServeOptions(mode=mode, chunks=chunks, kernel=kernel, profile=loaded)


def load(
    checkpoint: str | Path,
    router_dir: str | Path,
    device: str,
    dtype: Optional[str],
    capacity: str,
    options: ServeOptions,
) -> InferenceModel:
    model = load_inference_model(checkpoint, router_dir, device, dtype, capacity)
    model.options = options
    return model


def generate(
    model: InferenceModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    top_p: Optional[float],
    temperature: float,
    seed: int,
    domain: Optional[int],
    eos_id: Optional[int],
    batch_size: int,
    cuda_graph: bool,
    kv_cache: bool,
) -> tuple[list[list[int]], Optional[float]]:
    sampling = decode.Sampling(greedy=top_p is None, top_p=top_p or 1.0, temperature=temperature, seed=seed)
    if not kv_cache:
        return decode.generate(model, prompts, max_new_tokens, sampling, domain), None
    new, stats = kv_generate.generate_cached(
        model, prompts, max_new_tokens, sampling, domain, eos_id, batch_size, cuda_graph
    )
    return new, stats.first_token_s


def device_type(device: str) -> str:
    return resolve_device(device, int(os.environ.get("LOCAL_RANK", 0))).type
