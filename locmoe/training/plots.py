"""Pictures of a training run, drawn with matplotlib's non-interactive Agg canvas (no pyplot, no display):
the expert-load heatmap (tensorboard and ``locmoe report``) and the line plots of ``locmoe report``.

Legend: S logged steps, E experts. Loads and capacities are absolute counts of token copies per expert in
one layer call of the whole EP group (``GroupStats.expert_load`` / ``capacity``), before admission.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

FIG_SIZE, DPI = (6.0, 4.0), 100  # 600 x 400 pixels: readable in tensorboard and in a README


def new_figure(size: tuple[float, float] = FIG_SIZE):
    """A Figure bound to an Agg canvas explicitly, so no GUI backend is ever selected."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def over_capacity(loads_SE: np.ndarray, capacity_SE: np.ndarray) -> np.ndarray:
    """[S, E] bool: the cells whose routed copies exceed the expert's capacity (copies were dropped)."""
    return np.asarray(loads_SE) > np.asarray(capacity_SE)


def expert_load_figure(
    steps: Sequence[int], loads_SE: np.ndarray, capacity_SE: np.ndarray, layer: int, title: Optional[str] = None
):
    """Heatmap of one layer: x = expert, y = logged step (time runs downwards), colour = copies routed to
    the expert (absolute). The colour bar is marked at the capacity (a line, or a band when capacities
    differ); cells over capacity are hatched. ``capacity_SE`` broadcasts to ``loads_SE`` ([S, E], [S, 1])."""
    loads = np.asarray(loads_SE, dtype=np.float64)
    cap = np.broadcast_to(np.asarray(capacity_SE, dtype=np.float64), loads.shape)
    S, E = loads.shape
    lo_cap, hi_cap = float(cap.min()), float(cap.max())
    peak = max(float(loads.max()), 1.0)
    # a capacity far above every load (dropless: k·T) would squash the colours: leave it off the scale
    vmax = max(peak, hi_cap) if hi_cap <= 2.0 * peak else peak
    fig = new_figure()
    ax = fig.add_subplot()
    im = ax.imshow(
        loads,
        aspect="auto",
        cmap="viridis",
        vmin=0.0,
        vmax=vmax,
        interpolation="nearest",
        extent=(-0.5, E - 0.5, S - 0.5, -0.5),
    )
    over = over_capacity(loads, cap)
    if over.any():
        ax.add_collection(_hatched_cells(over))
    ax.set_xlabel("expert")
    ax.set_ylabel("logged step")
    ax.set_xticks(range(E))
    rows = _row_ticks(S)
    ax.set_yticks(rows, [str(steps[i]) for i in rows])
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("copies routed (tokens)")
    if lo_cap <= vmax:
        if hi_cap > lo_cap:
            bar.ax.axhspan(lo_cap, min(hi_cap, vmax), color="red", alpha=0.35)
        bar.ax.axhline(lo_cap, color="red", linewidth=3)
    cap_text = f"{lo_cap:.0f}" if hi_cap == lo_cap else f"{lo_cap:.0f}–{hi_cap:.0f}"
    drops = f", {int(over.sum())} cells over (hatched)" if over.any() else ""
    ax.set_title(title or f"layer {layer}: expert load, capacity {cap_text} (red){drops}", fontsize=10)
    return fig


def _hatched_cells(mask_SE: np.ndarray):
    """Red hatched squares over the True cells of a [S, E] mask (cell (s, e) is centred on (e, s))."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    cells = [Rectangle((e - 0.5, s - 0.5), 1.0, 1.0) for s, e in zip(*np.nonzero(mask_SE))]
    return PatchCollection(cells, facecolor="none", edgecolor="red", hatch="///", linewidth=0.8)


def _row_ticks(S: int, most: int = 10) -> list[int]:
    return sorted(set(np.linspace(0, S - 1, min(S, most)).round().astype(int).tolist()))


def to_image(fig) -> np.ndarray:
    """Render a figure: [3, H, W] uint8 (CHW, as tensorboard's add_image takes it)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))


def heatmap(steps: Sequence[int], loads_SE: np.ndarray, capacity_SE: np.ndarray, layer: int) -> np.ndarray:
    """The expert-load heatmap of one layer as a [3, 400, 600] uint8 image."""
    return to_image(expert_load_figure(steps, loads_SE, capacity_SE, layer))


def line_figure(title: str, ylabel: str, series: dict, ylim: Optional[tuple] = None, logy: bool = False):
    """Lines against the training step; ``series``: label -> (steps, values)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure()
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o" if len(x) <= 20 else None, markersize=3, label=label)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return fig


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically: a temporary file in the same directory, then a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
