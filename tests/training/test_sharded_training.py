"""Sharded data parallelism (``parallel.shard``, FSDP2) against today's replicated training, on real gloo ranks:
the same losses, checkpoints that hold each rank's shards, resume on another number of ranks and after a kill
mid-save, and the tools that read a checkpoint (convert, export) reading a sharded one.

All jobs of one launch run in the same processes (``cases_worker``: one torch and process-group start-up for
all of them). Capacity is dropless (expert choice's is its factor, by construction): with a capacity limit a
copy at the limit is dropped or kept by a rounding difference of the reduction order, a jump of ~1e-5 in the
loss that says nothing about sharding (measured with factor 1.25: equal to 2.4e-7 for 12 steps, then one step
1.3e-5 apart)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from locmoe.checkpoint.directory import list_checkpoints, load_state, temp_dir
from locmoe.checkpoint.sharded_weights import SHARDED_DIR, model_tensors
from tests import machine_share
from tests.training.runs import QUIET, ROOT, SMALL, TINY, losses

ROUTERS = ("locmoe", "gshard", "switch", "hash", "expert_choice")
COMMON = [*QUIET, *SMALL, "moe.capacity.mode=dropless", "train.ckpt_every=10", "train.eval_batches=1"]
TWO_BY_TWO = ["parallel.nodes=2", "parallel.devices_per_node=2"]  # EP over all 4 ranks: experts not sharded
EP2 = ["parallel.nodes=2", "parallel.devices_per_node=2", "parallel.expert_parallel_size=2"]  # experts over 2


def launch(nproc: int, cases: list[dict], where: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``cases``: {"out", "set", "resume"}; every case trains in ``nproc`` torchrun processes, in turn. With
    ``env`` (a fault to inject) the launch may fail, and its result is returned unchecked."""
    spec = [
        {"config": str(TINY), "set": [*c["set"], f"train.out_dir={c['out']}"], "resume": c.get("resume", False)}
        for c in cases
    ]
    file = where / f"cases_{len(list(where.glob('cases_*.json')))}.json"
    file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += [str(ROOT / "tests" / "training" / "cases_worker.py"), str(file)]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {}))
    proc = machine_share.run_alone(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=1500)
    assert env or proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> Path:
    """Every router replicated and fully sharded, ZeRO-2 for LocMoE, and EP 2 x DP 2 (experts sharded too)."""
    base = tmp_path_factory.mktemp("sharded")
    cases = []
    for router in ROUTERS:
        for mode in ("none", "full"):
            cases.append(
                {
                    "out": base / f"{router}_{mode}",
                    "set": [*COMMON, *TWO_BY_TWO, *_router(router), f"parallel.shard={mode}"],
                }
            )
    cases.append({"out": base / "locmoe_optimizer", "set": [*COMMON, *TWO_BY_TWO, "parallel.shard=optimizer"]})
    recompute = [*COMMON, *TWO_BY_TWO, "parallel.shard=full", "train.activation_checkpointing=true"]
    cases.append({"out": base / "locmoe_full_recompute", "set": recompute})
    for mode in ("none", "full"):
        cases.append({"out": base / f"ep2_{mode}", "set": [*COMMON, *EP2, f"parallel.shard={mode}"]})
    overlap = ["parallel.shard=none", "parallel.overlap_grad_reduce=true"]
    cases.append({"out": base / "locmoe_overlap", "set": [*COMMON, *TWO_BY_TWO, *overlap]})
    cases.append({"out": base / "ep2_overlap", "set": [*COMMON, *EP2, *overlap]})
    cases.append({"out": base / "reshard_four", "set": RESHARD_FOUR})
    launch(4, cases, base)
    return base


def _router(kind: str) -> list[str]:
    return [f"moe.router.kind={kind}", *(["moe.capacity.mode=factor"] if kind == "expert_choice" else [])]


def _max_gap(a: Path, b: Path, steps=range(1, 21)) -> float:
    x, y = losses(a), losses(b)
    assert all(s in x and s in y for s in steps), (sorted(x), sorted(y))
    return max(abs(x[s] - y[s]) for s in steps)


@pytest.mark.parametrize("router", ROUTERS)
def test_fully_sharded_equals_replicated(four_ranks, router):
    """fp32 CPU, 20 steps on 4 gloo ranks as 2 nodes x 2: every step's loss within 1e-5 (measured <= 4e-7:
    the gradients are summed in another order by the reduce-scatter). Expert choice's experts each take their
    top tokens up to a capacity, so a rounding difference flips a token at the cut: equal for 2 steps, then
    within 1e-4 (measured 2.8e-5; the same jumps as a capacity factor gives the other routers)."""
    none, full = four_ranks / f"{router}_none", four_ranks / f"{router}_full"
    if router == "expert_choice":
        assert _max_gap(none, full, range(1, 3)) <= 1e-6 and _max_gap(none, full) <= 1e-4
    else:
        assert _max_gap(none, full) <= 1e-5


def test_zero2_recompute_and_expert_sharding_equal_replicated(four_ranks):
    """parallel.shard optimizer (parameters kept gathered through the backward), full sharding with activation
    checkpointing, and EP 2 x DP 2, where the experts are sharded over the two ranks holding them and their
    gradients divided by W, not by 2."""
    assert _max_gap(four_ranks / "locmoe_none", four_ranks / "locmoe_optimizer") <= 1e-5
    assert _max_gap(four_ranks / "locmoe_none", four_ranks / "locmoe_full_recompute") <= 1e-5
    assert _max_gap(four_ranks / "ep2_none", four_ranks / "ep2_full") <= 1e-5


def test_overlapped_gradient_reduction_equals_the_flat_one(four_ranks):
    """parallel.overlap_grad_reduce: DDP's bucketed all-reduce of the dense gradients during the backward, the
    experts' averaged over expert_dp after it as before (EP over all 4 ranks, and EP 2 x DP 2), against the
    one flat all-reduce after the backward: every step's loss within 1e-5."""
    assert _max_gap(four_ranks / "locmoe_none", four_ranks / "locmoe_overlap") <= 1e-5
    assert _max_gap(four_ranks / "ep2_none", four_ranks / "ep2_overlap") <= 1e-5


def test_sharded_checkpoint_holds_each_ranks_shards(four_ranks):
    """Format 3: every rank wrote its own file; each holds about a quarter of the dense weights and moments
    (whole rows: within 5 % plus one row of each tensor), no model.safetensors and no optimizer files."""
    ckpt = list_checkpoints(four_ranks / "ep2_full")[-1][1]
    files = sorted((ckpt / SHARDED_DIR).glob("*.safetensors"))
    assert len(files) == 4 and not (ckpt / "model.safetensors").exists()
    assert not list(ckpt.glob("optimizer_rank*"))
    counts, rows = [], 0
    for file in files:
        with safe_open(str(file), "np") as f:
            keys = [k for k in f.keys() if ".moe.experts." not in k and k != "optimizer.step"]
            counts.append(sum(int(np.prod(f.get_slice(k).get_shape())) for k in keys))
            rows = max(rows, sum(int(np.prod(f.get_slice(k).get_shape()[1:])) for k in keys))
    total = sum(counts)
    assert all(abs(c - total / 4) <= 0.05 * total / 4 + rows for c in counts), counts
    assert load_state(ckpt)["layout"]["world_size"] == 4


def test_tools_read_a_sharded_checkpoint(four_ranks, tmp_path):
    """The sharded checkpoint's tensors, assembled, equal the replicated run's model.safetensors (the runs are
    equal to rounding); `locmoe convert` to MindSpore consolidates it; the router export reads it."""
    from locmoe.checkpoint.convert import convert_checkpoint
    from locmoe.cli.convert import backend_checkpoint_io
    from locmoe.export.from_checkpoint import export_checkpoint

    sharded = list_checkpoints(four_ranks / "locmoe_full")[-1][1]
    plain = list_checkpoints(four_ranks / "locmoe_none")[-1][1]
    with model_tensors(sharded) as a, model_tensors(plain) as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for name in b.keys():
            np.testing.assert_allclose(a.get_tensor(name), b.get_tensor(name), atol=1e-5, err_msg=name)
    out = convert_checkpoint(sharded, tmp_path / "ms", "mindspore", checkpoint_io=backend_checkpoint_io)
    with model_tensors(out) as c, model_tensors(sharded) as a:
        for name in a.keys():
            np.testing.assert_array_equal(c.get_tensor(name), a.get_tensor(name), err_msg=name)
    assert len(list(out.glob("optimizer_rank*.safetensors"))) == 4
    export_checkpoint(sharded, tmp_path / "export")
    assert (tmp_path / "export").is_dir()


def _copy_checkpoint(src_run: Path, step: int, dst_run: Path) -> None:
    src = dict(list_checkpoints(src_run))[step]
    (dst_run / "checkpoints").mkdir(parents=True)
    shutil.copytree(src, dst_run / "checkpoints" / src.name)


# Resuming on other ranks changes the data-parallel size, so the objective must not depend on how the global
# batch is split: the load-balance and locality losses are means over each EP group's tokens (a different split
# is a different objective, as in any MoE framework), so they are off here; the EP group stays 1 node x 2 ranks.
NO_AUX = ["moe.router.aux_loss_coef=0", "moe.router.locality_loss_coef=0", "parallel.shard=full"]
RESHARD_FOUR = [*COMMON, *EP2, *NO_AUX]  # EP 2 x DP 2, 2 sequences a rank
TWO = [*COMMON, *NO_AUX, "parallel.nodes=1", "parallel.devices_per_node=2", "train.batch_size=4"]  # EP 2 x DP 1


@pytest.fixture(scope="module")
def two_ranks(four_ranks, tmp_path_factory) -> Path:
    """On 2 ranks: a run killed (SIGKILL) while its ranks write step 20's shards, then resumed; the same run
    uninterrupted; and LocMoE's 4-rank run resumed from its step 10 (with the same global batch: 4 x 2 and
    2 x 4 sequences)."""
    base = tmp_path_factory.mktemp("two")
    killed = launch(
        2, [{"out": base / "killed", "set": TWO}], base, env={"LOCMOE_FAULT_INJECT": "kill_in_sharded_save:20"}
    )
    assert killed.returncode != 0
    # rank 0, stopped by torchrun while it waits for rank 1 in the save, removes the half-written directory
    assert [s for s, _ in list_checkpoints(base / "killed")] == [10] and "Signal 9 (SIGKILL)" in killed.stderr
    _copy_checkpoint(four_ranks / "reshard_four", 10, base / "four_to_two")
    resumed = [{"out": base / name, "set": TWO, "resume": True} for name in ("killed", "four_to_two")]
    launch(2, [{"out": base / "straight", "set": TWO}, *resumed], base)
    return base


def test_a_kill_during_a_sharded_save_leaves_the_previous_checkpoint(two_ranks):
    """Rank 1 is killed before it writes its shards of step 20: step 10 stays the newest complete checkpoint,
    and the resumed run continues the uninterrupted one (same layout: within 1e-6)."""
    assert not temp_dir(two_ranks / "killed", 20).exists()  # the resumed run cleaned it up, then wrote step 20
    assert _max_gap(two_ranks / "straight", two_ranks / "killed", range(11, 21)) <= 1e-6


def test_resume_on_another_number_of_ranks(four_ranks, two_ranks, tmp_path):
    """Saved on 4 ranks, resumed on 2 (and saved on 2, resumed on 4): steps 11-20 equal the uninterrupted
    run's within 1e-5."""
    _copy_checkpoint(two_ranks / "straight", 10, tmp_path / "two_to_four")
    launch(4, [{"out": tmp_path / "two_to_four", "set": RESHARD_FOUR, "resume": True}], tmp_path)
    straight = four_ranks / "reshard_four"
    assert _max_gap(straight, two_ranks / "straight") <= 1e-5  # the layouts agree
    assert _max_gap(straight, two_ranks / "four_to_two", range(11, 21)) <= 1e-5
    assert _max_gap(two_ranks / "straight", tmp_path / "two_to_four", range(11, 21)) <= 1e-5
    assert load_state(list_checkpoints(two_ranks / "four_to_two")[-1][1])["layout"]["world_size"] == 2
    assert load_state(list_checkpoints(tmp_path / "two_to_four")[-1][1])["layout"]["world_size"] == 4
