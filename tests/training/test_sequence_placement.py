"""``data.placement: affinity`` in real runs: deterministic and exactly resumable, the same on 4 gloo ranks as in
one process emulating them, the same in MindSpore as in torch; and it moves sequences (the run differs from the
drawn placement while every rank keeps its batch size, which the sampler enforces)."""

import pytest

from tests.training.runs import SMALL as RUN_SMALL
from tests.training.runs import losses, train

SMALL = [
    *RUN_SMALL,
    "moe.router.rho=1.0",  # no intra-node rule: the cross-node share then shows where placement put the tokens
]
PLACED = [*SMALL, "data.placement=affinity"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One torch process emulating 2 nodes x 2, 20 steps with affinity placement."""
    out = tmp_path_factory.mktemp("placement") / "straight"
    train(out, *PLACED, "train.steps=20", "train.ckpt_every=10")
    return out


def test_resume_reproduces_the_placed_run_bit_for_bit(straight, tmp_path):
    """15 steps, killed, resumed from step 10's checkpoint, against 20 straight: the placement of step s depends
    on the weights before it, which the checkpoint restores exactly (fp32 CPU, same process layout: equal)."""
    half = tmp_path / "half"
    # killed while writing step 15's checkpoint: step 10's is the newest complete one
    killed = train(
        half,
        *PLACED,
        "train.steps=20",
        "train.ckpt_every=5",
        env={"LOCMOE_FAULT_INJECT": "kill_during_checkpoint:15"},
        check=False,
    )
    assert killed.returncode == -9
    train(half, *PLACED, "train.steps=20", "train.ckpt_every=5", resume=True)
    assert losses(half) == losses(straight)
    assert losses(half, "cross_node_fraction") == losses(straight, "cross_node_fraction")


def test_placement_moves_sequences_and_computes_the_same(tmp_path):
    """Dropless, so that no copy's fate depends on its rank: the same seed placed by affinity and as drawn trains
    the same global batch on other rank assignments. The cross-node shares differ (only where the sequences
    sit can make them differ), and step 1's loss, before any update, agrees up to summation order (1e-5):
    placement changes where a sequence is computed, not what."""
    common = [*SMALL, "train.steps=6", "train.ckpt_every=0", "moe.capacity.mode=dropless"]
    train(tmp_path / "drawn", *common)
    train(tmp_path / "placed", *common, "data.placement=affinity")
    a, b = losses(tmp_path / "drawn", "cross_node_fraction"), losses(tmp_path / "placed", "cross_node_fraction")
    assert any(a[s] != b[s] for s in a)
    assert losses(tmp_path / "drawn")[1] == pytest.approx(losses(tmp_path / "placed")[1], abs=1e-5)


def test_four_gloo_ranks_place_as_one_process(straight, tmp_path):
    """4 gloo ranks (2 nodes x 2) all-gather their preferences and deal the same rows as the one process:
    every step's loss within 1e-4 and the cross-node shares equal while fp32 rounding has not reached a
    near-tie (the same tolerance and reasoning as the unplaced expert-parallel test)."""
    four = tmp_path / "four"
    train(four, *PLACED, "train.steps=20", "train.ckpt_every=0", nproc=4)
    a, b = losses(straight), losses(four)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
    one, many = losses(straight, "cross_node_fraction"), losses(four, "cross_node_fraction")
    assert [many[s] for s in range(1, 11)] == pytest.approx([one[s] for s in range(1, 11)])


def test_mindspore_places_as_torch(straight, tmp_path):
    """The same weights give the same preferences in both frameworks (the shared ``node_preference``), so the
    same placement and the same 12 steps within 1e-4 (the torch/MindSpore conformance tolerance)."""
    ms = tmp_path / "ms"
    train(ms, *PLACED, "train.steps=20", "train.ckpt_every=0", "parallel.backend=mindspore")
    a, b = losses(straight), losses(ms)
    assert max(abs(a[s] - b[s]) for s in range(1, 21)) <= 1e-4
    assert losses(ms, "cross_node_fraction") == pytest.approx(losses(straight, "cross_node_fraction"), abs=1e-6)
