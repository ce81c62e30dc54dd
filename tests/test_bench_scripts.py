"""The GPU benchmark scripts run end to end in their CPU smoke modes, so they cannot rot between GPU visits.
Nothing here looks at a timing: only that each script finishes and writes the rows it promises."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import machine_share

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd, nproc=0):
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        if nproc
        else [sys.executable]
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = machine_share.run_alone(
        [*launcher, *map(str, cmd)], alone=nproc > 1, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_moe_layer_multi_process_part(tmp_path):
    out = tmp_path / "multi.json"
    run(
        "scripts/bench/moe_layer.py",
        "--part",
        "multi",
        "--smoke",
        "--nodes",
        "2",
        "--tokens",
        "128",
        "--reps",
        "1",
        "--part-out",
        out,
        nproc=4,
    )
    whats = [r["what"] for r in json.loads(out.read_text())]
    assert whats[0].startswith("raw all_to_all_single")
    assert {"flat scheme dispatch", "hierarchical scheme dispatch", "MoE layer fwd+bwd, overlap_chunks=4"} <= set(whats)


def test_router_compare(tmp_path):
    """Mean ± std over 2 seeds, the paper bound beside quantile and factor 1.25 on the same runs, the plot."""
    text = tmp_path / "corpus.txt"
    text.write_text(Path(ROOT / "README.md").read_text() * 20)
    out = tmp_path / "rc.json"
    run(
        "scripts/bench/router_compare.py",
        "--smoke",
        "--nproc",
        "1",
        "--steps",
        "3",
        "--seeds",
        "2",
        "--routers",
        "locmoe_paper,gshard",
        "--data",
        text,
        "--work",
        tmp_path / "runs",
        "--out",
        out,
    )
    result = json.loads(out.read_text())
    assert [r["router"] for r in result["rows"]] == ["locmoe_paper", "gshard"]
    assert [(r["router"], r["seed"]) for r in result["runs"]] == [
        ("locmoe_paper", 0),
        ("locmoe_paper", 1),
        ("gshard", 0),
        ("gshard", 1),
    ]
    for row in result["rows"]:
        losses = [r["val_loss"] for r in result["runs"] if r["router"] == row["router"]]
        assert row["val_loss"] == pytest.approx(np.mean(losses)) and row["val_loss_std"] == pytest.approx(
            np.std(losses, ddof=1)
        )
    rules = result["rows"][0]["capacity_rules"]
    assert set(rules) == {"paper", "quantile", "factor 1.25"}
    assert rules["factor 1.25"]["capacity_over_mean_load"] == pytest.approx(1.25, abs=0.01)
    assert "capacity_rules" not in result["rows"][1]  # gshard has no paper bound
    assert out.with_suffix(".png").stat().st_size > 1000


def test_prefill(tmp_path):
    out = tmp_path / "prefill.json"
    run("scripts/bench/prefill.py", "--smoke", "--out", out, nproc=2)
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["rows"] and result["layers"]


def test_train_throughput(tmp_path):
    out = tmp_path / "tt.json"
    run(
        "scripts/bench/train_throughput.py",
        "--smoke",
        "--rows",
        "locmoe,gshard,dense,locmoe-eager",
        "--curve",
        "2",
        "--out",
        out,
    )
    result = json.loads(out.read_text())
    assert [r["row"] for r in result["rows"]] == ["locmoe", "gshard", "dense", "locmoe-eager"]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in result["rows"])
    assert result["curves"][0]["steps"] == 2 and len(result["curves"][0]["fast_curve"]) == 2


def test_time_to_quality(tmp_path):
    """Two routers, one seed: each run's curve, its modeled clock on both targets (increasing, one value per
    evaluation), the rows against GShard, the NIC sweep and the three plots."""
    out = tmp_path / "ttq.json"
    run("scripts/bench/time_to_quality.py", "--smoke", "--work", tmp_path / "runs", "--out", out)
    result = json.loads(out.read_text())
    assert [r["router"] for r in result["rows"]] == ["gshard", "locmoe@data.placement=affinity"]
    for rec in result["runs"]:
        steps = [s for s, _ in rec["curve"]]
        assert steps == [3, 6]
        for clock in rec["clock_at_eval"].values():
            assert len(clock) == 2 and 0 < clock[0] < clock[1]
    gshard = result["rows"][0]
    assert gshard["val_loss_vs_gshard"] == 0 and gshard["step_vs_gshard_h100_by_nic_gbit"]["400"] == 1
    for row in result["rows"]:  # 6 steps of an untrained model: only that every number is there and sane
        assert 0 <= row["cross_node_fraction"] <= 1 and row["modeled_step_ms_h100"] > 0
        assert set(row["step_vs_gshard_h100_by_nic_gbit"]) == {"400", "200", "100", "50"}
    for name in ("h100", "910b", "pareto"):
        assert (tmp_path / f"ttq_{name}.png").stat().st_size > 1000


def test_train_throughput_user_path_and_forced_balance(tmp_path):
    """Issue 28: every MoE row forced round-robin; our rows also timed on locmoe train's own loop (logging,
    validation and checkpoints on), each path saying how its step ran; torchtitan's row says why it did not run
    (not importable, or no CUDA: it builds its device mesh there)."""
    out = tmp_path / "tt.json"
    run(
        "scripts/bench/train_throughput.py",
        "--smoke",
        "--force-balance",
        "--rows",
        "gshard,dense,torchtitan",
        "--out",
        out,
    )
    result = json.loads(out.read_text())
    assert result["force_balance"] is True and "partial" not in result
    gshard, dense, titan = result["rows"]
    assert gshard["force_balance"] is True and dense["force_balance"] is False
    for row in (gshard, dense):
        assert row["tokens_per_s"] > 0 and row["user_tokens_per_s"] > 0 and row["user_wall_tokens_per_s"] > 0
        assert row["graph"] == row["user_graph"] == "eager (cpu)" and row["user_window"] == "steps 3-4"
    assert titan["row"] == "torchtitan" and titan["note"].startswith("skipped: ")


def test_moe_layer_megatron_shape(tmp_path):
    """``--shape megatron`` on CPU (tiny sizes): forced balance in every router row, Megatron's figure beside."""
    out = tmp_path / "ml.json"
    run("scripts/bench/moe_layer.py", "--smoke", "--shape", "megatron", "--tokens", "64", "--reps", "1", "--out", out)
    result = json.loads(out.read_text())
    assert result["shape"]["force_balance"] is True and result["args"]["shape"] == "megatron"
    layers = [r for r in result["rows"] if r["what"].startswith("MoE layer fwd+bwd")]
    assert len(layers) == 5 and all(r["what"].endswith("forced balance") and r["tflops"] > 0 for r in layers)
    assert result["rows"][-1]["part"] == "reference" and result["rows"][-1]["tflops"] == 481.0


def test_prefill_forced_balance(tmp_path):
    out = tmp_path / "prefill.json"
    run("scripts/bench/prefill.py", "--smoke", "--force-balance", "--routers", "gshard", "--out", out, nproc=2)
    result = json.loads(out.read_text())
    assert result["args"]["force_balance"] is True and {r["router"] for r in result["rows"]} == {"gshard"}


def test_memory_plan_check(tmp_path):
    """2 gloo ranks (replicated and fully sharded) and one CUDA-part row on CPU: each rank's parameters and AdamW
    state are exactly the plan's (bytes are counted, not timed: sharding is exact, FSDP2's pieces included)."""
    out = tmp_path / "memory.json"
    run("scripts/bench/memory_plan_check.py", "--smoke", "--out", out)
    result = json.loads(out.read_text())
    assert [(r["ranks"], r["shard"]) for r in result["ranks"]] == [(2, "none"), (2, "full")]
    for row in result["ranks"]:
        assert row["params_vs_plan"] == 1 and row["adamw_vs_plan"] == 1
        assert row["saved_MiB_max"] > 0 and row["step_peak_MiB_max"] > 0
    assert result["ranks"][1]["params_vs_replicated_over_dp"] == pytest.approx(1, rel=0.05)
    assert result["gpu"][0]["saved_GiB"] > 0 and result["gpu"][0]["plan_saved_GiB"] > 0


def test_shard_one_gpu(tmp_path):
    """locmoe train with parallel.shard none and full in one process (nothing to shard: the same run)."""
    out = tmp_path / "shard.json"
    run("scripts/bench/shard_one_gpu.py", "--smoke", "--modes", "none,full", "--out", out)
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["none", "full"]
    assert rows[0]["final_lm_loss"] == rows[1]["final_lm_loss"]  # one rank is never wrapped


def test_largest_one_gpu_plans_a_member_that_fits():
    """The job largest_one_gpu.py trains is the family member the plan says fits one 80 GiB device."""
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    from largest_one_gpu import planned

    from locmoe.planning.rank_memory import RankLayout, plan_rank_memory

    cfg, fit = planned(80, 2048)
    assert cfg.data.seq_len == 2048 and cfg.model.d_model == fit.d_model and cfg.moe.num_experts == fit.num_experts
    assert plan_rank_memory(cfg, RankLayout.of(cfg, 1), "none", fit.checkpointing).needs <= 80 * 2**30


def test_compare_trees(tmp_path):
    """Two rounds per tree: each row's median over its rounds, the change, and each round's new / old."""
    for tree, rounds in {"old": (100.0, 110.0), "new": (105.0, 99.0)}.items():
        for i, tok in enumerate(rounds, 1):
            rows = [{"row": "locmoe", "tokens_per_s": tok, "user_tokens_per_s": 2 * tok, "graph": "captured"}]
            (tmp_path / f"{tree}_round{i}.json").write_text(json.dumps({"device": "cpu", "torch": "x", "rows": rows}))
    run("scripts/bench/compare_trees.py", tmp_path)
    table = {r["path"]: r for r in json.loads((tmp_path / "compare.json").read_text())["rows"]}
    assert table["bench"]["old tokens/s"] == 105.0 and table["bench"]["new tokens/s"] == 102.0
    assert abs(table["bench"]["change %"] - 100 * (102 / 105 - 1)) < 1e-9
    assert table["bench"]["per round %"] == "+5.0, -10.0"
    assert table["locmoe train"]["new tokens/s"] == 204.0


def test_fast_vs_eager_lockstep(tmp_path):
    """Both pairs, every step compared; on CPU in fp32 two paths stepped from one state give one loss."""
    out = tmp_path / "lockstep.json"
    run("scripts/bench/fast_vs_eager_lockstep.py", "--smoke", "--out", out)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["path"], r["against"]) for r in rows] == [("fast", "eager"), ("eager", "eager")]
    assert all(len(r["per_step"]) == r["steps"] == 3 for r in rows)
    assert all(s["update_rel_diff"] == s["loss_rel_diff"] == 0.0 for s in rows[1]["per_step"])
