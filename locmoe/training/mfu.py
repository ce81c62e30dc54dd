"""Model FLOPs utilisation, as the training loop logs it (torchtitan's and PaLM's definition):

    MFU = tokens/s × (6·N_active + 12·L·S·d) / (peak × devices)

N_active = the parameters one token multiplies (attention, dense FFNs, k of E experts and the router of each
MoE layer, the output projection), L layers, S sequence length, d hidden size; peak = the device's dense bf16
rate. Only GPUs whose peak is known get an MFU: on CPU the number would mean nothing.
"""

from __future__ import annotations

from typing import Optional

from locmoe.config.schema import JobConfig
from locmoe.model_spec import moe_layer_indices

# Dense bf16 tensor-core peaks (FLOP/s), matched by substring of the device name, first match wins.
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; the PCIe card's 756e12 would read as a higher MFU
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


def flops_per_token(cfg: JobConfig) -> float:
    """Training FLOPs per token: 6·N_active (forward + backward of the matmuls) + 12·L·S·d (attention scores)."""
    m, moe = cfg.model, cfg.moe
    d, L, S = m.d_model, m.n_layers, cfg.data.seq_len
    moe_layers = set(moe_layer_indices(m))
    mats = 3 if moe.activation == "swiglu" else 2
    k = moe.router.top_k
    assert k is not None, "top_k is filled in when the config loads (locmoe.config.checks)"
    n = m.vocab_size * d  # output projection (tied or not)
    for i in range(L):
        n += 4 * d * d
        if i in moe_layers:
            n += k * mats * d * moe.d_expert + d * moe.num_experts
        else:
            n += 3 * d * m.d_ff
    return 6.0 * n + 12.0 * L * S * d


def peak_flops(device_name: str) -> Optional[float]:
    """The dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name()``), None when unknown."""
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def mfu(tokens_per_s: float, cfg: JobConfig, peak: float, devices: int) -> float:
    """The fraction of ``devices`` × ``peak`` that ``tokens_per_s`` (all devices together) reaches."""
    return tokens_per_s * flops_per_token(cfg) / (peak * devices)
