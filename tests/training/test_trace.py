"""``locmoe trace``: a trained checkpoint's routing choices, recorded for the placement planners."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from backends.torch.trace import copies_as_choices
from locmoe.checkpoint.directory import latest
from locmoe.config import config_from_dict
from locmoe.data import BatchSampler, load_corpus, load_tokenizer
from locmoe.placement.trace import fingerprint_from_config, load_trace
from tests.training.runs import ROOT, train

SHORT = ["train.steps=2", "train.warmup_steps=1", "train.ckpt_every=0"]


def locmoe_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "locmoe", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_copies_become_rows_in_choice_order():
    token = torch.tensor([2, 0, 1, 0, 2, 1])  # copies in dispatch order, k = 2
    expert = torch.tensor([5, 3, 4, 7, 6, 1])
    assert copies_as_choices(token, expert, 3, 2).tolist() == [[3, 7], [4, 1], [5, 6]]


def test_hash_router_trace_equals_its_table(tmp_path):
    """The hash router's choice of token t is hash_table[t]: the trace must hold exactly that, for the
    validation batches the trace says it read."""
    train(
        tmp_path / "run",
        *SHORT,
        "moe.router.kind=hash",
        "moe.router.gate=auto",
        "moe.router.top_k=null",
        "moe.capacity.mode=dropless",
    )
    proc = locmoe_cli("trace", tmp_path / "run", tmp_path / "t.npz", "--tokens", 1000, "--batch-size", 2)
    assert proc.returncode == 0, proc.stderr
    ckpt = latest(tmp_path / "run")
    cfg = config_from_dict(json.loads((ckpt / "train_state.json").read_text())["config"])
    trace = load_trace(tmp_path / "t.npz", expect=fingerprint_from_config(cfg))
    assert trace.num_tokens == 1024  # 4 batches of 2 x 128
    sampler = BatchSampler(
        load_corpus(cfg.data, load_tokenizer("byte"), 1), cfg.data.seq_len, 2, rank=0, world=1, seed=cfg.data.seed
    )
    tokens = np.concatenate([sampler.batch(s, split="val")[0].ravel() for s in range(4)])
    weights = load_file(str(ckpt / "model.safetensors"))
    for ordinal, layer in enumerate(trace.moe_layers):
        table = weights[f"layers.{layer}.moe.router.hash_table"]
        np.testing.assert_array_equal(trace.layers[ordinal][:, 0], table[tokens])


@pytest.fixture(scope="module")
def locmoe_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("locmoe") / "run"
    train(run, *SHORT, "export.at_end=true")
    return run


def test_trace_feeds_the_placement_planner(tmp_path, locmoe_run):
    assert locmoe_cli("trace", locmoe_run, tmp_path / "t.npz", "--tokens", 512).returncode == 0
    proc = locmoe_cli(
        "plan",
        "place",
        tmp_path / "t.npz",
        "--devices",
        4,
        "--expect",
        locmoe_run / "router",
        "--out",
        tmp_path / "placement.json",
        "--json",
        tmp_path / "plan.json",
    )
    assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "placement.json").read_text())
    assert table["placement"]["num_devices"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tokens", "0"], "--tokens must be >= 1"),
        (["--set", "model.d_model=64"], "trace only overrides data.* fields"),
    ],
)
def test_bad_trace_requests(tmp_path, locmoe_run, args, message):
    proc = locmoe_cli("trace", locmoe_run, tmp_path / "t.npz", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "t.npz").exists()
