"""A short real run of the main job's config (tiny_cpu, 4 steps, logging every step): the tensorboard
heatmaps, the expert-load records, the tag groups and ``locmoe report``'s PNG files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from locmoe import cli
from locmoe.training.train_log import LOADS_FILE, TAG_GROUPS
from tests.report.images import check_png, tb_images
from tests.training.runs import train

STEPS, MOE_LAYERS, E = 4, (1, 2, 3), 8  # tiny_cpu: 1 dense block, then 3 MoE blocks of 8 experts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    train(
        out,
        f"train.steps={STEPS}",
        "train.warmup_steps=1",
        "logging.log_every=1",
        "logging.tensorboard=true",
        "logging.heatmap_every=2",
        "train.eval_every=2",
        "train.eval_batches=1",
    )
    return out


def test_expert_load_records(run):
    rows = [json.loads(x) for x in (run / LOADS_FILE).read_text().splitlines()]
    assert [(r["step"], r["layer"]) for r in rows] == [(s, L) for s in range(1, STEPS + 1) for L in MOE_LAYERS]
    for r in rows:
        assert len(r["load"]) == E and isinstance(r["capacity"], int)
    metrics = {m["step"]: m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    for r in rows:  # the per-layer records agree with the logged means over layers
        layer_rows = [x for x in rows if x["step"] == r["step"]]
        assert metrics[r["step"]]["capacity"] == pytest.approx(np.mean([x["capacity"] for x in layer_rows]))
        assert metrics[r["step"]]["max_expert_load"] == pytest.approx(np.mean([max(x["load"]) for x in layer_rows]))


def test_every_logged_scalar_has_a_tag_group(run):
    keys = {k for line in (run / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)} - {"step"}
    assert keys - set(TAG_GROUPS) == set(), "add the new keys to locmoe.training.train_log.TAG_GROUPS"


def test_tensorboard_heatmaps(run):
    images = tb_images(run / "tb")
    assert set(images) == {(f"moe/expert_load/layer_{L}", s) for L in MOE_LAYERS for s in (2, 4)}
    for img in images.values():
        assert img.shape == (400, 600, 3)
        assert img.reshape(-1, 3).std(axis=0).min() > 10  # drawn, not one colour


def test_report(run, tmp_path, capsys):
    assert cli.main(["report", str(run), "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    names = {"loss.png", "tokens_per_s.png", "routing.png", *(f"expert_load_layer_{L}.png" for L in MOE_LAYERS)}
    assert {p.rsplit("/", 1)[-1] for p in written} == names
    for p in written:
        assert check_png(p) == (600, 400)
