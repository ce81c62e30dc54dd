"""``locmoe train --print-config`` and the console lines of a run (issue 30), without training."""

from __future__ import annotations

from locmoe import cli
from locmoe.config import load_config
from locmoe.model_spec import moe_layer_indices
from locmoe.training.log_lines import duration, final_line, step_line
from locmoe.training.mfu import flops_per_token, mfu, peak_flops


def test_print_config_prints_yaml_that_reloads_to_the_same_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["tiny_cpu", "--with", "gshard", "--set", "train.steps=40", "logging.wandb.mode=offline"]
    rc = cli.main(["train", *argv, "--print-config"])
    cap = capsys.readouterr()
    assert rc == 0 and cap.err == ""
    (tmp_path / "resolved.yaml").write_text(cap.out)
    expected = load_config("tiny_cpu", ["train.steps=40", "logging.wandb.mode=offline"], layers=["gshard"])
    assert load_config(tmp_path / "resolved.yaml") == expected
    assert expected.moe.router.top_k == 2 and "top_k: 2" in cap.out  # resolved: null filled in
    assert list(tmp_path.iterdir()) == [tmp_path / "resolved.yaml"]  # nothing trained, nothing written


def test_print_config_refuses_a_warmup_longer_than_the_run(capsys):
    rc = cli.main(["train", "tiny_cpu", "--set", "train.steps=10", "train.warmup_steps=10", "--print-config"])
    assert rc == 0
    capsys.readouterr()
    rc = cli.main(["train", "tiny_cpu", "--set", "train.steps=10", "--print-config"])  # its warmup_steps: 30
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "train.warmup_steps: 30 must be <= train.steps (10)" in err[0]


def test_step_and_final_lines():
    line = step_line(120, 300, {"loss": 2.43121, "val_loss": 2.5, "tokens_per_s": 41300.0, "mfu": 0.382}, 112.4)
    assert line == "step 120/300 | loss 2.4312 | val 2.5000 | 41.3k tok/s | MFU 38.2% | ETA 1m52s"
    assert step_line(5, 10, {"loss": 1.0}, None) == "step  5/10 | loss 1.0000"
    assert [duration(s) for s in (4.4, 187, 7500)] == ["4s", "3m07s", "2h05m"]
    assert final_line("job", {"step": 40, "val_loss": 1.84213}, None) == "job: done: validation loss 1.8421 at step 40"


def test_mfu_counts_the_active_parameters_only():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("cpu") is None
    small = load_config("tiny_cpu")
    more = load_config("tiny_cpu", ["moe.num_experts=32"])  # the same top-k: only the routers grow
    moe_layers = len(moe_layer_indices(small.model))
    assert flops_per_token(more) - flops_per_token(small) == 6.0 * small.model.d_model * 24 * moe_layers
    assert mfu(1e6, small, 1e15, 2) == 1e6 * flops_per_token(small) / 2e15


def test_train_refuses_an_out_dir_of_other_files_and_writes_nothing_there(tmp_path, capsys):
    """A run never writes beside files it did not write: one line naming train.out_dir, exit 2, the folder as
    it was. An empty folder is fine, and so is a run's own (its lock, checkpoints or metrics)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    rc = cli.main(["train", "tiny_cpu", "--set", f"train.out_dir={out}", "train.steps=2", "train.warmup_steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train.out_dir" in err[0] and "notes.txt" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    from locmoe.training.common import check_out_dir

    (out / "metrics.jsonl").write_text("")
    check_out_dir(load_config("tiny_cpu", [f"train.out_dir={out}"]))  # a previous run's directory: allowed
