"""Inter-layer expert affinity (ExFlow) and intra-layer co-activation (GRACE-MoE) from a routing trace.

Definitions, for consecutive MoE layers l and l+1 of a trace with T tokens and k choices per token:

- **Transition counts** ``C_l[i, j] = Σ_t Σ_a Σ_b 1[x_l[t, a] = i] · 1[x_{l+1}[t, b] = j]``: every pair of a
  token's choices (k × k pairs per token) counts once, so ``Σ_ij C_l = T·k²``. With k = 1 this is
  ExFlow's count of tokens going from expert i to expert j.
- **Affinity** ``P_l(j | i) = C_l[i, j] / Σ_j' C_l[i, j']``: the probability that a token on expert i at
  layer l picks expert j at layer l+1 (one of its k choices, each pair equally weighted). A row with no
  tokens is uniform (1/E): nothing is known about it.
- **Strength** (:class:`AffinityStats`), all weighted by row mass ``w_i = Σ_j C_l[i, j] / Σ C_l``:
  ``top1`` = Σ_i w_i max_j P(j|i) (1/E with no affinity, 1 when every expert has one successor);
  ``entropy_ratio`` = Σ_i w_i H(P(·|i)) / log E (1 = no affinity, 0 = deterministic);
  ``mutual_info_bits`` = H(next-layer marginal) − Σ_i w_i H(P(·|i)) (what layer l tells about l+1);
  ``top_g_mass`` = Σ_i w_i (mass of the g most likely successors of i), g = experts per device: the
  share of hops a perfect placement could keep on one device if each expert's best g successors fit.
- **Co-activation** ``A_l[i, j]`` (i ≠ j) = tokens that choose both i and j at layer l (top-k, k > 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from locmoe.placement.trace import RoutingTrace


def transition_counts(prev: np.ndarray, nxt: np.ndarray, num_experts: int) -> np.ndarray:
    """[E, E] pair counts C[i, j] between the choices ``prev`` [T, k] and ``nxt`` [T, k'] of one token set."""
    if len(prev) != len(nxt):
        raise ValueError(f"transition_counts: {len(prev)} tokens at layer l but {len(nxt)} at layer l+1")
    E = num_experts
    # every (choice a at l, choice b at l+1) pair of a token: [T, k, k'] flat index i*E + j
    flat = prev.astype(np.int64)[:, :, None] * E + nxt.astype(np.int64)[:, None, :]
    return np.bincount(flat.ravel(), minlength=E * E).reshape(E, E).astype(np.float64)


def affinity_counts(trace: RoutingTrace) -> list[np.ndarray]:
    """One [E, E] transition-count matrix per consecutive MoE layer pair (L - 1 of them)."""
    return [
        transition_counts(trace.layers[l], trace.layers[l + 1], trace.num_experts) for l in range(trace.num_layers - 1)
    ]


def conditional(counts: np.ndarray) -> np.ndarray:
    """[E, E] P(j | i) from transition counts; rows without tokens are uniform."""
    rows = counts.sum(axis=1, keepdims=True)
    E = counts.shape[1]
    return np.where(rows > 0, counts / np.maximum(rows, 1e-300), 1.0 / E)


def coactivation_counts(choices: np.ndarray, num_experts: int) -> np.ndarray:
    """[E, E] symmetric counts of tokens choosing both i and j (i ≠ j) in one layer; zero diagonal."""
    c = transition_counts(choices, choices, num_experts)
    np.fill_diagonal(c, 0.0)
    return c


@dataclass
class AffinityStats:
    """How strongly layer ``layer`` predicts layer ``next_layer`` (see the module docstring)."""

    layer: int
    next_layer: int
    tokens: int
    top1: float
    top1_uniform: float
    entropy_ratio: float
    mutual_info_bits: float
    top_g_mass: float
    g: int

    def as_row(self) -> dict:
        return asdict(self)


def affinity_stats(trace: RoutingTrace, group_size: int = 1) -> list[AffinityStats]:
    """Strength of the affinity of every consecutive MoE layer pair; ``group_size`` = g of ``top_g_mass``."""
    E = trace.num_experts
    out = []
    for l, counts in enumerate(affinity_counts(trace)):
        p = conditional(counts)
        w = counts.sum(axis=1) / max(counts.sum(), 1e-300)
        h_rows = _entropy(p)
        marginal = counts.sum(axis=0) / max(counts.sum(), 1e-300)
        top_g = np.sort(p, axis=1)[:, ::-1][:, :group_size].sum(axis=1)
        out.append(
            AffinityStats(
                layer=trace.moe_layers[l],
                next_layer=trace.moe_layers[l + 1],
                tokens=trace.num_tokens,
                top1=float(w @ p.max(axis=1)),
                top1_uniform=1.0 / E,
                entropy_ratio=float(w @ h_rows / np.log(E)) if E > 1 else 0.0,
                mutual_info_bits=float((_entropy(marginal[None])[0] - w @ h_rows) / np.log(2)),
                top_g_mass=float(w @ top_g),
                g=group_size,
            )
        )
    return out


def _entropy(p: np.ndarray) -> np.ndarray:
    """[R] natural-log entropy of each row of ``p`` [R, E] (0 · log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
