"""Device-kind and model profiles for the deployment planner: built-in defaults and JSON files.

Defaults (say where every number comes from):
- ``h200`` (measured): bf16 GEMM 760 TFLOP/s and device copy 4.2 TB/s measured on 2×H200 (torch 2.11,
  2026-11-23), 141 GB (spec), link 446 GB/s = the NCCL all-to-all measured at 128 MB, and 35 µs per
  collective call = the 1 MB all-to-all measured at 28 GB/s (≈ 37 µs, almost all fixed cost).
- ``h100`` (GEMM measured, the rest stated): bf16 dense GEMM 746 TFLOP/s measured on an H100 (the
  MoE-layer comparison, torch 2.11); 80 GB and 3.35 TB/s HBM3 from the H100 SXM spec sheet, the bandwidth
  times the H200's measured/spec efficiency (0.875); NVLink4 as on the H200 (the same 450 GB/s per direction), so the
  H200's measured 446 GB/s and 35 µs per call.
- ``a100-40gb`` (stated, not measured): spec sheet (312 TFLOP/s bf16, 1.555 TB/s, 40 GB, NVLink3
  300 GB/s per direction) times the efficiency measured on the H200 against its own spec sheet
  (760/989 = 0.77 for GEMM, 4.2/4.8 = 0.875 for HBM, 446/450 ≈ 0.99 for the link), same call latency.
- model ``mixtral-8x7b-like``: 46.7 B parameters of which 45.1 B expert weights (32 layers × 8 experts ×
  3 × 4096 × 14336), 12.9 B active per token, top-2 of 8, d = 4096, KV 32 layers × 8 heads × 128 × 2 × 2 B.

A profile file is JSON: ``{"device_kinds": {name: {tflops, mem_gb, hbm_tbps, link_gbps, ...}},
"model": {...ModelSpec fields}, "workload": {mean_prompt, mean_output, max_context}}``; every section is
optional and replaces the default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from locmoe.planning.errors import PlanningError
from locmoe.planning.hetero import DeviceKind, ModelSpec, Workload
from locmoe.text_files import read_json

H200_GEMM_EFF, H200_HBM_EFF, H200_LINK_EFF = 760 / 989, 4.2 / 4.8, 446 / 450

DEFAULT_KINDS = {
    "h200": DeviceKind(
        "h200",
        tflops=760.0,
        mem_gb=141.0,
        hbm_tbps=4.2,
        link_gbps=446.0,
        link_latency_us=35.0,
        source="measured on 2xH200 (torch 2.11, 2026-11-23); memory from the spec",
    ),
    "h100": DeviceKind(
        "h100",
        tflops=746.0,
        mem_gb=80.0,
        hbm_tbps=3.35 * H200_HBM_EFF,
        link_gbps=446.0,
        link_latency_us=35.0,
        source="GEMM measured on an H100 (torch 2.11); HBM3 3.35 TB/s "
        "spec x the H200's measured/spec efficiency; NVLink4 as measured on the H200; 80 GB spec",
    ),
    "a100-40gb": DeviceKind(
        "a100-40gb",
        tflops=312 * H200_GEMM_EFF,
        mem_gb=40.0,
        hbm_tbps=1.555 * H200_HBM_EFF,
        link_gbps=300 * H200_LINK_EFF,
        link_latency_us=35.0,
        source="stated: A100-40GB spec sheet x the H200's measured/spec efficiency",
    ),
}

DEFAULT_MODEL = ModelSpec(
    "mixtral-8x7b-like",
    total_params_b=46.7,
    active_params_b=12.9,
    expert_params_b=45.1,
    num_layers=32,
    d_model=4096,
    num_experts=8,
    top_k=2,
    kv_bytes_per_token=32 * 8 * 128 * 2 * 2,
)

DEFAULT_WORKLOAD = Workload(mean_prompt=1100.0, mean_output=360.0, max_context=5120)


def load_profiles(path: str | Path | None) -> tuple[dict, ModelSpec, Workload]:
    """(device kinds, model, workload) from a JSON profile, defaults where a section is absent."""
    kinds, model, workload = dict(DEFAULT_KINDS), DEFAULT_MODEL, DEFAULT_WORKLOAD
    if path is None:
        return kinds, model, workload
    data = read_json(path, "--profile", PlanningError)
    if "device_kinds" in data:
        if not isinstance(data["device_kinds"], dict):
            raise PlanningError(f"--profile {path}: device_kinds must be an object of kind name -> fields")
        kinds = {}
        for name, fields in data["device_kinds"].items():
            where = f"{path}: device_kinds.{name}"
            kinds[name] = _build(DeviceKind, {"name": name, **_fields(fields, where)}, where)
    if "model" in data:
        model = _build(ModelSpec, data["model"], f"{path}: model")
    if "workload" in data:
        workload = _build(Workload, data["workload"], f"{path}: workload")
    return kinds, model, workload


def _fields(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise PlanningError(f"{where} must be a JSON object of fields, not {type(value).__name__}")
    return value


def _build(cls, fields: dict, where: str):
    fields = _fields(fields, where)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise PlanningError(f"{where}: unknown fields {unknown}; allowed: {sorted(names)}")
    try:
        return cls(**fields)
    except TypeError as err:
        raise PlanningError(f"{where}: {err}") from None


def parse_budget(text: str) -> dict:
    """``"h200=8,a100-40gb=16"`` → {"h200": 8, "a100-40gb": 16}."""
    budget = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if not name.strip() or not count.strip().isdigit():
            raise PlanningError(f"budget entry {part!r}: expected KIND=COUNT, e.g. h200=8")
        budget[name.strip()] = int(count)
    if not budget:
        raise PlanningError(f"budget {text!r} names no devices; expected e.g. h200=8,a100-40gb=16")
    return budget
