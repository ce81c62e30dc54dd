"""AdamW with sharded moments (``backends.mindspore.sharded_adamw``, ``parallel.shard: optimizer | full``).

In one process, N emulated ranks each update their slices (``owned`` + ``apply``) and one ``rebuild`` joins
them: the same parameters and moments as the unsharded AdamW, and each rank holds 1/N of the moments. Under
msrun with 4 workers: training with sharded moments equals training without, with EP = world (experts held
once, only the dense parameters sharded) and EP = 2 (experts sharded over the 2 ranks holding them); its
checkpoint holds the unsharded run's optimiser files and resumes the run.
"""

import re
import shutil

import numpy as np
import pytest
from mindspore import Parameter, Tensor, ops

from backends.mindspore.collectives import Group
from backends.mindspore.distributed import setup_runtime
from backends.mindspore.optim import AdamW
from backends.mindspore.sharded_adamw import ShardedAdamW, Slice
from locmoe.checkpoint.directory import step_dir
from locmoe.config import load_config
from locmoe.model_spec import is_expert_param, parameter_shapes
from tests.backends.mindspore.test_optim import LRS, T, problem, reference
from tests.training.runs import SMALL_MODEL, losses, train
from tests.training.test_train_mindspore import MS, MSRUN_FOUR

setup_runtime("CPU")

# sizes that divide 4 ranks, that leave the last rank padding, and (bias, 3) one that leaves rank 3 nothing
SHAPES = {
    "embed.weight": (16, 8),
    "layers.0.attn_norm.weight": (8,),
    "layers.0.bias": (3,),
    "layers.1.moe.experts.w1": (2, 5, 3),
    "layers.1.moe.experts.w2": (1, 7),
}


def group(index: int, size: int) -> Group:
    return Group(None, tuple(range(size)), (0,) * size, index)


def emulated(starts: dict, world: int, ep: int) -> tuple[dict, list]:
    """One ShardedAdamW per emulated rank over one set of parameters: the dense ones over the world, the
    experts over the world // ep ranks r % ep, r % ep + ep, ... (rank r is member r // ep of its group)."""
    params = {n: Parameter(Tensor(a), name=n) for n, a in starts.items()}
    return params, [ShardedAdamW(params, T, group(r, world), group(r // ep, world // ep)) for r in range(world)]


def sharded_step(opts: list, grads: dict, ep: int):
    """Every rank updates its slices; the whole parameters from rank 0's groups (ranks 0, ep, 2ep, ... for the
    experts; the other expert groups computed the same slices from the same numbers). Returns name → those
    members."""
    for o in opts:
        o.step_count += 1
        o.apply(*o.owned(grads))
    members = lambda n: opts[::ep] if is_expert_param(n) else opts  # noqa: E731
    opts[0].rebuild({n: ops.stack([o.shards[n] for o in members(n)]) for n in grads})
    return members


@pytest.mark.parametrize("world, ep", [(4, 4), (4, 2)], ids=["EP = world", "EP 2 of 4"])
def test_sharded_steps_equal_unsharded_adamw(world, ep):
    """Six steps (a zero lr among them) with decay and without: the parameters and the joined moment slices
    equal the unsharded optimiser's within 1e-6 (the same fused kernel on the same float32 numbers, element by
    element; measured bit-equal), and torch's rule in float64 within test_optim's 2e-6 relative."""
    problems = {n: problem(s, seed=i) for i, (n, s) in enumerate(SHAPES.items())}
    starts = {n: p for n, (p, _) in problems.items()}
    plain = AdamW({n: Parameter(Tensor(a), name=n) for n, a in starts.items()}, T)
    params, opts = emulated(starts, world, ep)
    for step, lr in enumerate(LRS):
        grads = {n: Tensor(g[step]) for n, (_, g) in problems.items()}
        plain.lr = lr
        for o in opts:
            o.lr = lr
        plain.step(grads)
        members = sharded_step(opts, grads, ep)
        for n in SHAPES:
            np.testing.assert_allclose(params[n].asnumpy(), plain.params[n].asnumpy(), rtol=0, atol=1e-6)
    for n, shape in SHAPES.items():
        for key in ("exp_avg", "exp_avg_sq"):
            rows = ops.stack([getattr(o, key)[n] for o in members(n)])
            joined = opts[0].slices[n].join(rows, shape).asnumpy()
            np.testing.assert_allclose(joined, getattr(plain, key)[n].asnumpy(), rtol=0, atol=1e-6)
        w, m, v = reference(starts[n], problems[n][1], LRS, decayed=len(shape) >= 2)
        np.testing.assert_allclose(params[n].asnumpy(), w, rtol=2e-6, atol=1e-9)


def test_slices_cover_a_tensor_once_and_a_checkpoint_loads_into_them():
    """take/join round trip with padding (3 elements over 4 ranks: rank 3 holds only zeros), and
    ``load_state_dict`` of full moments (a checkpoint's) gives each rank its slice."""
    x = np.arange(3, dtype=np.float32) + 1
    parts = [Slice(i, 4, 3).take(Tensor(x)).asnumpy() for i in range(4)]
    assert [p.tolist() for p in parts] == [[1.0], [2.0], [3.0], [0.0]]
    np.testing.assert_array_equal(Slice(0, 4, 3).join(Tensor(np.stack(parts)), (3,)).asnumpy(), x)
    full = {n: np.random.default_rng(1).standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    _, opts = emulated({n: np.zeros(s, np.float32) for n, s in SHAPES.items()}, 4, 2)
    for o in opts:
        o.load_state_dict({"step": 7, "exp_avg": full, "exp_avg_sq": full})
    for n, a in full.items():
        for o in opts:
            assert o.step_count == 7
            np.testing.assert_array_equal(o.exp_avg_sq[n].asnumpy(), o.slices[n].take(Tensor(a)).asnumpy())


@pytest.mark.parametrize("ep", [4, 2], ids=["EP = world", "EP 2 of 4"])
def test_each_rank_holds_a_slice_of_the_moments(ep):
    """The msrun test's model on 4 workers: per rank, the moments of the dense parameters are 1/4 of the
    unsharded ones, the experts' 1/(4 / ep), each within 5 % plus the padding (< group size per parameter)."""
    cfg = load_config("tiny_cpu", [*SMALL_MODEL, "parallel.backend=mindspore"])
    E = cfg.moe.num_experts
    shapes = {n: ((E // ep, *s[1:]) if is_expert_param(n) else s) for n, s in parameter_shapes(cfg).items()}
    params = {n: Parameter(ops.zeros(s), name=n) for n, s in shapes.items() if "angle_ema" not in n}
    opt = ShardedAdamW(params, T, group(1, 4), group(0, 4 // ep))
    for (g, names), N in zip(opt.groups, (4, 4 // ep)):
        whole = sum(params[n].size for n in names)
        mine = sum(opt.exp_avg[n].size + opt.exp_avg_sq[n].size for n in names)
        assert 2 * whole / N <= mine <= 2 * whole / N * 1.05 + 2 * (N - 1) * len(names), (g.size, mine, whole)
    mine, whole = opt.moment_bytes()
    assert whole == 2 * 4 * sum(p.size for p in params.values())
    print(f"EP {ep} of 4: {mine} moment bytes a rank, {whole} unsharded")


# ----------------------------------------------------------------------------- msrun, 4 workers

# 4 workers as 2 nodes x 2 (tests/training/test_train_mindspore.py's MS), checkpoints at 10 and 20
RUN = [*MS, "train.ckpt_every=10"]
EP2 = "parallel.expert_parallel_size=2"
TOL = 1e-5  # the same reduced gradients and the same elementwise kernel: measured equal to the last bit


def msrun(out, *sets: str, resume: bool = False):
    return train(out, *RUN, *sets, nproc=4, launcher="msrun", resume=resume)


def start_note(out) -> str:
    """The start message's sharding note, from rank 0's msrun log."""
    log = (out.parent / f"{out.name}_logs" / "worker_0.log").read_text(errors="replace")
    found = re.search(r"AdamW moments sharded .*", log)
    return found.group(0) if found else ""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_run) -> dict:
    """name → out dir: EP = world without and with sharding (shard: full), EP = 2 without and with
    (shard: optimizer). The unsharded EP = world run is test_train_mindspore.py's 4-worker run, trained once."""
    root = tmp_path_factory.mktemp("sharded")
    sets = {
        "ep4 full": ["parallel.shard=full"],
        "ep2 none": [EP2, "parallel.shard=none"],
        "ep2 optimizer": [EP2, "parallel.shard=optimizer"],
    }
    for name, extra in sets.items():
        msrun(root / name.replace(" ", "_"), *extra)
    assert [*RUN, "parallel.shard=none"] == MSRUN_FOUR
    return {"ep4 none": shared_run(*MSRUN_FOUR, nproc=4, launcher="msrun")} | {
        name: root / name.replace(" ", "_") for name in sets
    }


@pytest.mark.parametrize("ep", ["ep4", "ep2"], ids=["EP = world", "EP 2 of 4"])
def test_msrun_sharded_training_equals_unsharded(runs, ep):
    """20 steps, fp32 CPU, 4 workers: every step's loss within 1e-5; the start message says what is sharded."""
    sharded = runs["ep4 full" if ep == "ep4" else "ep2 optimizer"]
    a, b = losses(runs[f"{ep} none"]), losses(sharded)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) <= TOL, {s: (a[s], b[s]) for s in a}
    note = start_note(sharded)
    print(f"{ep}: {note}")
    assert f"over 4 ranks, experts' over {1 if ep == 'ep4' else 2}:" in note, note
    assert ("parallel.shard full shards only the optimizer state" in note) == (ep == "ep4")
    assert start_note(runs[f"{ep} none"]) == ""


def test_sharded_checkpoint_holds_the_unsharded_files_and_resumes(runs, tmp_path):
    """Step 10's optimizer_rank{r} files of the sharded run (gathered on save) equal the unsharded run's within
    1e-6; that checkpoint resumes the sharded run: steps 11-20 within 1e-5 of the run that did not stop."""
    from backends.mindspore.checkpoint import read_optimizer

    sharded, plain = runs["ep2 optimizer"], runs["ep2 none"]
    for r in range(4):
        x, y = read_optimizer(step_dir(sharded, 10), r), read_optimizer(step_dir(plain, 10), r)
        assert x["step"] == y["step"] == 10
        for key in ("exp_avg", "exp_avg_sq"):
            assert sorted(x[key]) == sorted(y[key])
            for n in x[key]:
                assert x[key][n].shape == y[key][n].shape, n
                np.testing.assert_allclose(x[key][n], y[key][n], rtol=0, atol=1e-6, err_msg=n)
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed)
    shutil.rmtree(step_dir(resumed, 20))
    msrun(resumed, EP2, "parallel.shard=optimizer", resume=True)
    a, b = losses(sharded), losses(resumed)
    assert sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in range(11, 21)) <= TOL, {s: (a[s], b[s]) for s in range(11, 21)}
