"""Routing trace format: writer, atomic save, load, and the errors for bad or foreign traces."""

import numpy as np
import pytest

from locmoe.config import load_config
from locmoe.placement.trace import RoutingTrace, TraceError, TraceWriter, fingerprint_from_config, load_trace

FP = {"num_experts": 8, "top_k": 2, "moe_layers": [1, 3], "router_kind": "locmoe", "d_model": 64, "vocab_size": 256}


def random_ids(rng, T, k=2, E=8):
    return np.argsort(rng.random((T, E)), axis=1)[:, :k]


def test_writer_accumulates_batches_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    w = TraceWriter(FP, source={"checkpoint": "step_10"})
    batches = [(random_ids(rng, 5), random_ids(rng, 5)), (random_ids(rng, 3), random_ids(rng, 3))]
    for a, b in batches:
        w.add(1, a)
        w.add(3, b)
    path = w.save(tmp_path / "t.npz")
    trace = load_trace(path, expect=FP)
    assert trace.num_tokens == 8 and trace.num_layers == 2 and trace.moe_layers == [1, 3]
    np.testing.assert_array_equal(trace.layers[0], np.concatenate([batches[0][0], batches[1][0]]))
    np.testing.assert_array_equal(trace.layers[1], np.concatenate([batches[0][1], batches[1][1]]))
    assert trace.layers[0].dtype == np.int32
    assert trace.source == {"checkpoint": "step_10"}
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temporary file left behind


def test_top1_accepts_flat_ids(tmp_path):
    fp = dict(FP, top_k=1, moe_layers=[0])
    w = TraceWriter(fp)
    w.add(0, np.array([1, 2, 7]))
    assert load_trace(w.save(tmp_path / "t.npz")).layers[0].shape == (3, 1)


def test_expert_load_counts_copies():
    t = RoutingTrace(dict(FP, moe_layers=[0]), [np.array([[0, 1], [1, 2]])])
    np.testing.assert_array_equal(t.expert_load(), [[1, 2, 1, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize(
    "layer, ids, fragment",
    [
        (2, np.zeros((3, 2), int), "layer 2 is not an MoE layer of this model; moe_layers = [1, 3]"),
        (1, np.zeros((3, 3), int), "expert ids of shape (3, 3); expected [T, 2] (top_k = 2)"),
        (1, np.full((3, 2), 8), "expert ids span [8, 8]; allowed [0, 8)"),
        (1, np.zeros((3, 2)) + 0.5, "expected integers"),
    ],
)
def test_writer_rejects_bad_batches(layer, ids, fragment):
    with pytest.raises(TraceError) as err:
        TraceWriter(FP).add(layer, ids)
    assert fragment in str(err.value)


def test_unequal_token_counts_are_an_error(tmp_path):
    w = TraceWriter(FP)
    w.add(1, np.zeros((4, 2), int))
    w.add(3, np.zeros((3, 2), int))
    with pytest.raises(TraceError, match=r"token counts per layer are \[4, 3\]"):
        w.save(tmp_path / "t.npz")
    assert not (tmp_path / "t.npz").exists()


def test_trace_from_another_model_names_every_differing_key(tmp_path):
    w = TraceWriter(FP)
    w.add(1, np.zeros((2, 2), int))
    w.add(3, np.zeros((2, 2), int))
    path = w.save(tmp_path / "t.npz")
    with pytest.raises(TraceError) as err:
        load_trace(path, expect=dict(FP, num_experts=16, moe_layers=(1, 2)))
    msg = str(err.value)
    assert "is a trace from another model" in msg
    assert "num_experts = 8 in the trace, 16 expected" in msg
    assert "moe_layers = [1, 3] in the trace, [1, 2] expected" in msg
    assert "top_k" not in msg  # equal keys are not listed
    load_trace(path, expect={"num_experts": 8, "moe_layers": (1, 3)})  # a subset that agrees is fine


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        load_trace(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(TraceError, match="is not a readable routing trace"):
        load_trace(bad)
    w = TraceWriter(FP)
    w.add(1, np.zeros((2, 2), int))
    w.add(3, np.zeros((2, 2), int))
    good = w.save(tmp_path / "good.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(TraceError, match="not a readable routing trace|truncated or corrupt"):
        load_trace(cut)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(TraceError, match="has no 'meta' entry"):
        load_trace(other)


def test_bad_fingerprint():
    with pytest.raises(TraceError, match=r"fingerprint lacks \['vocab_size'\]"):
        TraceWriter({k: v for k, v in FP.items() if k != "vocab_size"})
    with pytest.raises(TraceError, match="need integers 1 <= top_k <= num_experts"):
        TraceWriter(dict(FP, top_k=9))


def test_fingerprint_from_config():
    cfg = load_config(
        overrides=[
            "model.n_layers=6",
            "model.dense_layers=2",
            "model.moe_every=2",
            "moe.num_experts=16",
            "model.d_model=128",
        ]
    )
    fp = fingerprint_from_config(cfg)
    assert fp["moe_layers"] == [2, 4]
    assert fp["num_experts"] == 16 and fp["top_k"] == 2 and fp["router_kind"] == "locmoe"
    assert fp["d_model"] == 128 and fp["vocab_size"] == cfg.model.vocab_size
