"""--resume with a changed config (issues 12 and 18): a changed optimiser hyper-parameter or schedule is applied
and reported, one line each; a changed model shape is an error naming the field; metrics.jsonl holds each
step once after a resume."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from locmoe.checkpoint.directory import CheckpointError, step_dir
from locmoe.config import config_to_dict, load_config
from locmoe.training.resume_check import resume_changes
from locmoe.training.schedule import lr_at
from locmoe.training.train_log import drop_records_after
from tests.checkpoint.tiny import copy_run, one_error_line, tiny_train
from tests.training.runs import TINY


def cfg_with(*sets):
    return load_config(str(TINY), list(sets))


def test_each_change_is_one_line_saying_what_it_does():
    old = cfg_with("train.steps=300")
    new = cfg_with(
        "train.steps=600", "train.weight_decay=0.01", "train.beta2=0.99", "logging.log_every=5", "train.eval_every=7"
    )
    lines = resume_changes(config_to_dict(old), new, 300, "ckpt")
    assert len(lines) == 3, lines  # logging and evaluation cadence are not reported
    beta2, steps, wd = lines  # sorted by field
    a, b = lr_at(300, old.train), lr_at(300, new.train)
    assert "train.steps changed 300 -> 600" in steps and f"{b:.3g}" in steps and f"{a:.3g}" in steps
    assert a == pytest.approx(3e-4) and b > 4 * a  # the jump issue 12 saw: the cosine restarts half-way
    assert "train.beta2 changed 0.95 -> 0.99 (applied from step 301)" in beta2
    assert "train.weight_decay changed 0.1 -> 0.01 (applied from step 301)" in wd
    assert resume_changes(config_to_dict(old), old, 300, "ckpt") == []


def test_a_field_only_one_version_of_the_schema_has_is_not_a_change():
    saved = config_to_dict(cfg_with())
    del saved["moe"]["router"]["gate_bias"]  # a checkpoint of a locmoe before the field existed
    saved["train"]["retired_field"] = 1
    assert resume_changes(saved, cfg_with(), 10, "ckpt") == []


@pytest.mark.parametrize(
    "field, value",
    [("moe.num_experts", 16), ("model.d_model", 64), ("moe.d_expert", 96), ("parallel.placement", "round_robin")],
)
def test_a_shape_change_is_an_error_naming_the_field(field, value):
    with pytest.raises(CheckpointError, match=f"{field} is {value!r}, the checkpoint was trained with"):
        resume_changes(config_to_dict(cfg_with()), cfg_with(f"{field}={value}"), 10, "ckpt")


def test_resume_with_another_num_experts_writes_nothing(run4, tmp_path):
    run = copy_run(run4, tmp_path / "run")
    before = (run / "metrics.jsonl").read_bytes()
    line = one_error_line(tiny_train(run, "train.steps=6", "moe.num_experts=16", flags=["--resume"], check=False))
    assert "moe.num_experts is 16, the checkpoint was trained with 8" in line
    assert (run / "metrics.jsonl").read_bytes() == before and not (run / ".lock").exists()


def test_the_config_s_hyper_parameters_are_applied_on_resume(run4):
    """The torch optimiser resumed under a changed config has the config's weight decay and betas (before,
    the checkpoint's won silently) and the checkpoint's moments and step counts."""
    import torch
    from safetensors.torch import load_file

    from backends.torch.checkpoint import load_checkpoint
    from backends.torch.distributed import init_distributed
    from backends.torch.optim import make_optimizer
    from backends.torch.train import build_model
    from locmoe.config import config_from_dict

    ckpt = step_dir(run4, 4)
    cfg = config_from_dict(json.loads((ckpt / "train_state.json").read_text())["config"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, weight_decay=0.03, beta1=0.8, beta2=0.9))
    ctx = init_distributed(cfg.parallel)
    model = build_model(cfg, ctx)
    opt = make_optimizer(model, cfg.train)
    assert load_checkpoint(ckpt, model, opt, ctx)[0] == 4
    assert [g["weight_decay"] for g in opt.param_groups] == [0.03, 0.0]
    assert all(tuple(g["betas"]) == (0.8, 0.9) for g in opt.param_groups)
    saved = load_file(str(ckpt / "optimizer_rank0.safetensors"))
    for name, p in model.named_parameters():
        state = opt.state[p]
        assert float(state["step"]) == 4.0 and state["step"].dtype == torch.float32
        torch.testing.assert_close(state["exp_avg"], saved[f"exp_avg.{name}"], rtol=0, atol=0)


def test_metrics_hold_each_step_once_after_a_resume(run4, tmp_path):
    run = copy_run(run4, tmp_path / "run")
    shutil.rmtree(step_dir(run, 4))  # as if the run had died after step 4's log, before its save
    tiny_train(run, "train.steps=4", flags=["--resume"])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_drop_records_after_keeps_earlier_steps_and_drops_a_cut_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.4}\n{"step": 4, "lo')
    drop_records_after(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
    drop_records_after(tmp_path / "absent.jsonl", 2)  # nothing to do
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), ["metrics.jsonl"])
