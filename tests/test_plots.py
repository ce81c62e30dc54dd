"""locmoe.training.plots: the expert-load heatmap (absolute copies, capacity marked) and atomic PNG writes."""

from __future__ import annotations

import numpy as np
import pytest

from locmoe.training import plots
from tests.report.images import check_png, decode_png

S, E = 12, 8


@pytest.fixture(scope="module")
def loads() -> np.ndarray:
    rng = np.random.default_rng(0)
    out = rng.integers(50, 70, (S, E)).astype(float)
    out[:, 3] += 50  # one hot expert, over a capacity of 75 at every step
    return out


def test_heatmap_is_a_readable_image(loads):
    img = plots.heatmap(range(10, 10 * S + 1, 10), loads, np.full((S, 1), 75), layer=1)
    assert img.shape == (3, 400, 600) and img.dtype == np.uint8  # 6 x 4 in at 100 dpi, CHW
    assert img.reshape(3, -1).std(axis=1).min() > 10  # drawn, not one colour


def test_colour_scale_is_absolute(loads):
    """Twice the load is another picture (a per-row normalised map would draw both the same)."""
    a = plots.heatmap(range(S), loads, np.full((S, 1), 1000), 1)
    b = plots.heatmap(range(S), 2 * loads, np.full((S, 1), 1000), 1)
    assert np.abs(a.astype(int) - b.astype(int)).sum() > 0


def test_capacity_is_marked(loads):
    over = plots.over_capacity(loads, np.full((S, 1), 75))
    assert over[:, 3].all() and over.sum() == S
    low = plots.heatmap(range(S), loads, np.full((S, 1), 75), 1)  # hatched cells, line at 75
    high = plots.heatmap(range(S), loads, np.full((S, 1), 140), 1)  # nothing over, line at 140
    assert np.abs(low.astype(int) - high.astype(int)).sum() > 0


def test_title_names_capacity_per_expert_and_dropless(loads):
    fig = plots.expert_load_figure(range(S), loads, np.tile(np.arange(70, 70 + E), (S, 1)), 2)
    assert "capacity 70–77" in fig.axes[0].get_title()
    fig = plots.expert_load_figure(range(S), loads, np.full((S, 1), 10_000), 2)  # dropless: k·T
    assert "capacity 10000" in fig.axes[0].get_title() and "over" not in fig.axes[0].get_title()
    assert fig.axes[0].images[0].norm.vmax == pytest.approx(loads.max())  # colours not squashed


def test_save_png_is_atomic(tmp_path, loads):
    path = plots.save_png(plots.expert_load_figure(range(S), loads, np.full((S, 1), 75), 1), tmp_path / "h.png")
    assert check_png(path) == (600, 400)
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]  # no temporary file left
    assert decode_png(path.read_bytes()).shape == (400, 600, 3)
