"""Measure the cost model's inputs on the current device (and the EP group's all-to-all) and fit a
:class:`DeviceProfile`. Collective under torchrun: every rank measures, rank 0's fit is used by all, so
every rank makes the same chunk-count decisions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from backends.torch.collectives import Group
from backends.torch.distributed import _backend_for, resolve_device
from backends.torch.experts import GroupedExperts
from backends.torch.inference.expert_kernels import run_experts
from backends.torch.inference.loader import DTYPES
from backends.torch.inference.timing import time_call
from locmoe.inference.calibration import KernelSample, LinkSample, Measurements, fit_profile
from locmoe.inference.errors import ProfileError
from locmoe.inference.profile import DeviceProfile


@dataclass(frozen=True)
class CalibrationShape:
    """What to measure: the local experts of one rank and the row counts to try."""

    experts: int  # local experts (E / W)
    d_model: int
    d_expert: int
    rows_per_expert: tuple  # mean rows per expert of each measured batch
    activation: str = "swiglu"
    reps: int = 5


def load_patterns(experts: int, mean_rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-expert loads with the same total: balanced, Zipf-skewed, and one hot expert holding half."""
    total = experts * mean_rows
    zipf = 1.0 / np.arange(1, experts + 1) ** 1.2
    hot = np.full(experts, 0.5 / max(experts - 1, 1))
    hot[0] = 0.5 if experts > 1 else 1.0
    out = {"balanced": np.full(experts, mean_rows)}
    for name, share in (("zipf", zipf / zipf.sum()), ("hot", hot)):
        loads = np.floor(share * total).astype(np.int64)
        loads[0] += total - loads.sum()
        out[name] = np.random.default_rng(seed).permutation(loads)
    return out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def measure(
    shape: CalibrationShape,
    device: torch.device,
    dtype: torch.dtype,
    group: Group,
    progress: Optional[Callable[[str], None]] = None,
) -> Measurements:
    """Time both expert kernels on every load pattern of every row count, then copies (and the all-to-all);
    ``progress`` is told what was measured after each row count."""
    torch.manual_seed(0)
    ex = GroupedExperts(shape.experts, shape.d_model, shape.d_expert, shape.activation)
    ex.reset_parameters(0.02)
    ex = ex.to(device=device, dtype=dtype)
    m = Measurements(
        device=device_name(device),
        dtype=str(dtype).replace("torch.", ""),
        d_model=shape.d_model,
        d_expert=shape.d_expert,
        activation=shape.activation,
        world_size=group.size,
        tile_rows=128 if device.type == "cuda" else 1,
    )
    with torch.no_grad():
        for mean in shape.rows_per_expert:
            for loads in load_patterns(shape.experts, mean).values():
                x = torch.randn(int(loads.sum()), shape.d_model, device=device, dtype=dtype)
                counts = torch.from_numpy(loads).to(device)
                for kernel, into in (("grouped", m.grouped), ("dense", m.dense)):
                    s = time_call(lambda: run_experts(ex, x, counts, loads, kernel), device, reps=shape.reps)
                    into.append(KernelSample(loads.tolist(), s))
            if progress is not None:
                progress(
                    f"experts at {mean} rows each: grouped {m.grouped[-1].seconds * 1e3:.3g} ms, dense "
                    f"{m.dense[-1].seconds * 1e3:.3g} ms (last load pattern)"
                )
        for rows in message_rows(shape, dtype, 1):
            x = torch.randn(rows, shape.d_model, device=device, dtype=dtype)
            idx = torch.randperm(rows, device=device)
            s = time_call(lambda: x.index_select(0, idx), device, reps=shape.reps)
            m.copy.append(LinkSample(x.numel() * x.element_size(), s))
        if group.size > 1:
            m.all_to_all = measure_all_to_all(shape, device, dtype, group)
    return m


def message_rows(shape: CalibrationShape, dtype, ranks: int) -> list[int]:
    """Row counts of the copy / all-to-all measurements: from the size of the largest batch's top-2 copies
    (clamped to 4 MB .. 256 MB) down by factors of 4, five sizes, split over ``ranks``."""
    row_bytes = shape.d_model * torch.tensor([], dtype=dtype).element_size()
    largest = max(shape.rows_per_expert) * shape.experts * 2 * row_bytes
    top = min(max(largest, 4 << 20), 256 << 20)
    return [max(1, top // 4**i // ranks // row_bytes) for i in range(5)]


def measure_all_to_all(shape: CalibrationShape, device, dtype, group: Group) -> list[LinkSample]:
    """Equal splits; a sample's bytes are what one rank sends to its peers, as the cost model counts them."""
    W, out = group.size, []
    for per_peer in message_rows(shape, dtype, W):
        x = torch.randn(per_peer * W, shape.d_model, device=device, dtype=dtype)
        y = torch.empty_like(x)
        s = time_call(
            lambda: dist.all_to_all_single(y, x, group=group.handle),
            device,
            reps=shape.reps,
            barrier=lambda: dist.barrier(group=group.handle),
        )
        out.append(LinkSample(per_peer * (W - 1) * x.shape[1] * x.element_size(), s))
    return out


def calibrate(
    shape: CalibrationShape,
    device: torch.device,
    dtype: torch.dtype,
    group: Group,
    progress: Optional[Callable[[str], None]] = None,
) -> DeviceProfile:
    """Measure (every rank: the all-to-all needs them all) and fit rank 0's measurements; the profile, or
    rank 0's error, reaches every rank."""
    m = measure(shape, device, dtype, group, progress)
    box: list = [None]
    if group.my_index == 0:
        try:
            box[0] = fit_profile(m)
        except ProfileError as err:
            box[0] = str(err)
    if group.size > 1:
        assert group.handle is not None  # a group of several ranks has one
        dist.broadcast_object_list(box, src=dist.get_global_rank(group.handle, 0), group=group.handle)
    if isinstance(box[0], str):
        raise ProfileError(box[0])
    profile = box[0]
    profile.measured_at["rows_per_expert"] = list(shape.rows_per_expert)
    return profile


def calibrate_launched(
    experts: int,
    d_model: int,
    d_expert: int,
    rows: Sequence[int],
    reps: int,
    device: str,
    dtype: Optional[str],
    out: str | Path,
    progress: Callable[[str], None],
) -> Optional[Path]:
    """:func:`calibrate` over the processes the launcher started (the world group, set up here), each holding
    ``experts / W`` experts. Rank 0 alone reports ``progress`` and writes the profile to ``out``: its path
    there, None on the other ranks.

    Args:
        dtype: float32 / bfloat16 / float16; None = bfloat16 on CUDA, float32 elsewhere.
    """
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", 0)))
    W = int(os.environ.get("WORLD_SIZE", 1))
    if W > 1 and not dist.is_initialized():
        dist.init_process_group(_backend_for(dev))
    rank = dist.get_rank() if W > 1 else 0
    group = Group(dist.group.WORLD if W > 1 else None, tuple(range(W)), (0,) * W, rank)
    dt = DTYPES[dtype] if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    shape = CalibrationShape(experts // W, d_model, d_expert, tuple(rows), reps=reps)
    say = progress if rank == 0 else (lambda text: None)
    say(
        f"{dev.type}, {str(dt).replace('torch.', '')}: E={experts} (local {shape.experts}), "
        f"d={d_model}, f={d_expert}, rows per expert {list(rows)}, {reps} reps"
    )
    profile = calibrate(shape, dev, dt, group, say)
    return profile.save(out) if rank == 0 else None
