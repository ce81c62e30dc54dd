"""``locmoe report`` and the logger's expert-load records, on metrics written by TrainLogger itself (no
training): the PNG files, the tensorboard heatmaps, bad run directories, resumed runs, tag groups."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from locmoe import cli
from locmoe.cli.report import dedupe, read_jsonl
from locmoe.config.schema import JobConfig
from locmoe.training.train_log import LOADS_FILE, TAG_GROUPS, TrainLogger, _tag
from tests.report.images import check_png, tb_images

LAYERS, E, STEPS = (1, 2, 3), 8, (10, 20, 30, 40)
EXPECTED = {"loss.png", "tokens_per_s.png", "routing.png", *(f"expert_load_layer_{L}.png" for L in LAYERS)}


def write_run(out, per_expert_capacity: bool = False, heatmap_every: int = 20) -> None:
    """What a 40-step run logging every 10 steps writes (heatmap every 20, validation at 20 and 40)."""
    cfg = JobConfig()
    cfg.train.out_dir, cfg.train.steps = str(out), STEPS[-1]
    cfg.logging.progress, cfg.logging.tensorboard, cfg.logging.heatmap_every = False, True, heatmap_every
    rng = np.random.default_rng(0)
    log = TrainLogger(cfg, is_main=True, start_step=0)
    for step in STEPS:
        for layer in LAYERS:
            load = rng.integers(40, 80, E)
            cap = np.arange(60, 60 + E) if per_expert_capacity else 64
            log.expert_load(step, layer, load, cap)
        scalars = dict(
            loss=5.0 - step / 20,
            lm_loss=4.9 - step / 20,
            aux_objective=0.1,
            tokens_per_s=1e4 + step,
            dropped_fraction=0.05,
            cross_node_fraction=0.3,
            in_node_fraction=0.4,
        )
        if step % 20 == 0:
            scalars["val_loss"] = 5.1 - step / 20
        log.step(step, scalars)
    log.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    write_run(out)
    return out


def report(capsys, *args: str) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()  # drop the log lines of write_run (no progress bar: one line per logged step)
    rc = cli.main(["report", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err.splitlines()


def test_report_writes_every_plot_of_a_resumed_run(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    write_run(run, heatmap_every=0)  # resumed from 0: the same steps again
    rc, out, err = report(capsys, run, "--out", tmp_path / "pics")
    assert rc == 0, err
    assert sorted(p.split("/")[-1] for p in out) == sorted(EXPECTED)  # every file written is printed
    for name in EXPECTED:
        check_png(tmp_path / "pics" / name)
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == sorted(EXPECTED)  # no temporaries


def test_last_record_wins():
    rows = [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 10, "loss": 1.0}]
    assert dedupe(rows, key=lambda r: r["step"]) == [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 2.0}]


def test_only_what_was_logged_default_out(tmp_path, capsys):
    """A run without expert-load records or validation: loss.png alone, into RUN_DIR/plots."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in STEPS))
    rc, out, err = report(capsys, run)
    assert rc == 0 and out == [str(run / "plots" / "loss.png")] and f"no {LOADS_FILE}" in err[0]
    check_png(run / "plots" / "loss.png")


def test_tensorboard_heatmaps(run_dir):
    images = tb_images(run_dir / "tb")
    assert set(images) == {(f"moe/expert_load/layer_{L}", s) for L in LAYERS for s in (20, 40)}
    for img in images.values():
        assert img.shape == (400, 600, 3) and img.std() > 10
    first, last = images[("moe/expert_load/layer_1", 20)], images[("moe/expert_load/layer_1", 40)]
    assert np.abs(first.astype(int) - last.astype(int)).sum() > 0  # step 40's shows 4 rows, step 20's 2


def test_expert_load_records(run_dir, tmp_path):
    write_run(tmp_path / "b", per_expert_capacity=True, heatmap_every=0)
    a = [json.loads(x) for x in (run_dir / LOADS_FILE).read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / LOADS_FILE).read_text().splitlines()]
    assert [(r["step"], r["layer"]) for r in a] == [(s, L) for s in STEPS for L in LAYERS]
    assert all(len(r["load"]) == E and r["capacity"] == 64 for r in a)
    assert all(r["capacity"] == list(range(60, 60 + E)) for r in b)


def test_unfinished_last_line_is_skipped(run_dir, tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text((run_dir / "metrics.jsonl").read_text() + '{"step": 50, "lo')  # killed while writing
    rows = read_jsonl(path, "metrics.jsonl", keys=("step",))
    assert [r["step"] for r in rows] == list(STEPS) and "unfinished last line" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "empty_dir", "no_steps", "corrupt", "bad_load"])
def test_bad_run_dir(run_dir, tmp_path, capsys, case):
    run = tmp_path / "run"
    if case in ("corrupt", "bad_load"):
        shutil.copytree(run_dir, run)
    elif case != "missing":
        run.mkdir()
    if case == "no_steps":
        (run / "metrics.jsonl").write_text("\n")
    if case == "corrupt":
        lines = (run / "metrics.jsonl").read_text().splitlines()
        (run / "metrics.jsonl").write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    if case == "bad_load":
        with open(run / LOADS_FILE, "a") as f:
            f.write(json.dumps({"step": 50, "layer": 1, "load": [1, 2], "capacity": 3}) + "\n")
    rc, out, err = report(capsys, run, "--out", tmp_path / "pics")
    assert rc == 2 and out == [] and len(err) == 1, (rc, out, err)
    assert err[0].startswith("locmoe report: ReportError:")
    assert not (tmp_path / "pics").exists()  # nothing half-written


def test_tag_groups():
    assert _tag("aux_objective") == "train/aux_objective" and _tag("aux_loss") == "train/aux_loss"
    assert _tag("val_loss") == "val/val_loss" and _tag("tokens_per_s") == "perf/tokens_per_s"
    assert _tag("dropped_fraction") == "moe/dropped_fraction"
    assert {g for g in TAG_GROUPS.values()} == {"train", "val", "perf", "moe"}
    assert all(
        TAG_GROUPS[k] == "train" for k in TAG_GROUPS if k.endswith(("_loss", "_objective")) and not k.startswith("val_")
    )
    assert _tag("new_loss") == "train/new_loss" and _tag("val_ppl") == "val/val_ppl"  # fallback by name
