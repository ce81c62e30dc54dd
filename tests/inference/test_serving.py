"""Loading a served model: it computes what the training model computes; bad inputs are clear errors;
``locmoe generate`` and ``locmoe bench`` end to end on a tiny checkpoint."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backends.torch.inference.decode import Sampling, check_prompts, generate, next_token
from backends.torch.inference.loader import load_inference_model
from locmoe.checkpoint.directory import latest
from locmoe.config import config_from_dict
from locmoe.export import ExportError, load_router, write_router_export
from locmoe.inference.deployment import serving_placements
from locmoe.inference.errors import InferenceError
from tests import machine_share

ROOT = Path(__file__).resolve().parents[2]


def test_served_model_equals_the_training_model(tiny):
    """One process, dropless, fp32: the training model (same config on one device) gives the same logits.
    Tolerance 1e-5: same weights and kernels, only the MoE bookkeeping differs (measured ~1e-7)."""
    from backends.torch.checkpoint import load_model_weights
    from backends.torch.distributed import init_distributed
    from backends.torch.train import build_model

    served = load_inference_model(tiny, tiny / "router")
    ckpt = latest(tiny)
    cfg = config_from_dict(json.loads((ckpt / "train_state.json").read_text())["config"])
    cfg = dataclasses.replace(
        cfg, moe=served.cfg.moe, parallel=dataclasses.replace(cfg.parallel, nodes=1, devices_per_node=1)
    )
    trained = build_model(cfg, init_distributed(cfg.parallel))
    load_model_weights(trained, ckpt)
    trained.eval()
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _, _ = trained(tokens)
    assert (served(tokens) - ref).abs().max().item() <= 1e-5
    assert (served(tokens, last_only=True) - ref[:, -1]).abs().max().item() <= 1e-5


def test_greedy_and_top_p_decoding(tiny):
    model = load_inference_model(tiny, tiny / "router")
    prompts = [[100, 101, 102], [40, 41]]
    a = generate(model, prompts, 5)
    assert [len(x) for x in a] == [5, 5] and a == generate(model, prompts, 5)  # greedy: deterministic
    s = Sampling(greedy=False, top_p=0.5, seed=3)
    assert generate(model, prompts, 5, s) == generate(model, prompts, 5, s)  # seeded
    logits = torch.tensor([[0.0, 5.0, 4.9, -10.0]])
    picks = {
        int(next_token(logits, Sampling(greedy=False, top_p=0.6), torch.Generator().manual_seed(i))) for i in range(30)
    }
    assert picks == {1, 2}  # the nucleus holds the two top tokens, never the others
    assert int(next_token(logits, Sampling(), torch.Generator())) == 1
    # a sequence that reaches the context stops there
    full = generate(model, [[65] * (model.context - 2)], 10)
    assert len(full[0]) == 2


def test_prompt_longer_than_the_context_is_a_clear_error(tiny):
    model = load_inference_model(tiny, tiny / "router")
    with pytest.raises(InferenceError, match=r"prompt 1 has 129 tokens, longer than the model's context of 128"):
        check_prompts([[1, 2], [3] * 129], model.context)
    with pytest.raises(InferenceError, match="longer than the model's context"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(InferenceError, match="top_p"):
        Sampling(greedy=False, top_p=0.0)


def test_export_of_another_checkpoint_is_a_clear_error(tiny, tmp_path):
    r = load_router(tiny / "router")
    wrong_shape = dataclasses.replace(r.manifest, d_model=256, top_k=1)
    write_router_export(tmp_path / "a", wrong_shape, r.tensors)
    with pytest.raises(ExportError, match=r"d_model: export 256, checkpoint 128.*top_k: export 1, checkpoint 2"):
        load_inference_model(tiny, tmp_path / "a")
    other = {k: v + 1.0 if k.endswith("gate_weight") else v for k, v in r.tensors.items()}
    write_router_export(tmp_path / "b", r.manifest, other)
    with pytest.raises(ExportError, match=r"gate_weight differs"):
        load_inference_model(tiny, tmp_path / "b")


def test_device_count_that_does_not_fit_the_placement_is_a_clear_error(tiny, export2, monkeypatch):
    m = load_router(tiny / "router").manifest
    with pytest.raises(InferenceError, match=r"places the experts on 4 devices \(2 nodes x 2\), but 3 processes"):
        serving_placements(m, 3)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(InferenceError, match="on 2 devices .* but 4 processes were launched"):
        load_inference_model(tiny, export2)
    topo, placements = serving_placements(m, 4)
    assert topo.world_size == 4 and all(p.experts_per_rank == 2 for p in placements.values())


def run_cli(*args, nproc: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    )
    return machine_share.run_alone(
        [*launcher, "-m", "locmoe", *args],
        alone=nproc > 1,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_generate_cli_end_to_end(tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def main(\n\nimport os\n")
    one = run_cli("generate", str(tiny), str(tiny / "router"), "--prompts", str(prompts), "--max-new-tokens", "6")
    assert one.returncode == 0, one.stderr[-2000:]
    lines = one.stdout.splitlines()
    assert lines[0].startswith("def main(") and any(ln.startswith("import os") for ln in lines)
    four = run_cli(
        "generate",
        str(tiny),
        str(tiny / "router"),
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "6",
        "--chunks",
        "2",
        nproc=4,
    )
    assert four.returncode == 0, four.stderr[-2000:]
    assert "import os" in four.stdout
    (tmp_path / "long.txt").write_text("x" * 200 + "\n")
    bad = run_cli("generate", str(tiny), str(tiny / "router"), "--prompts", str(tmp_path / "long.txt"))
    assert bad.returncode == 2 and "prompt 0 has 200 tokens, longer than the model's context" in bad.stderr


def test_bench_calibrate_and_prefill_cli(tiny, tmp_path):
    out = tmp_path / "cpu.json"
    cal = run_cli(
        "bench",
        "calibrate",
        "--out",
        str(out),
        "--experts",
        "8",
        "--d-model",
        "64",
        "--d-expert",
        "96",
        "--rows",
        "4,16,32",
        "--reps",
        "2",
        nproc=2,
    )
    assert cal.returncode == 0, cal.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["world_size"] == 2 and data["all_to_all"] is not None
    pre = run_cli(
        "bench",
        "prefill",
        str(tiny),
        str(tiny / "router"),
        "--lengths",
        "16,32",
        "--batch",
        "2",
        "--chunks",
        "2",
        "--reps",
        "1",
        "--json",
        str(tmp_path / "prefill.json"),
    )
    assert pre.returncode == 0, pre.stderr[-2000:]
    rows = json.loads((tmp_path / "prefill.json").read_text())["rows"]
    assert [(r["length"], r["mode"]) for r in rows] == [
        (16, "plain"),
        (16, "pipelined"),
        (32, "plain"),
        (32, "pipelined"),
    ]
    assert {r["chunks"] for r in rows} == {"1"}  # one process: nothing to overlap
    assert all(r["tokens_per_s"] > 0 for r in rows)
