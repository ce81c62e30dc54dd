"""The modeled training step of a whole model (``locmoe.planning.step_model``) on a hand-computed case."""

import pytest

from locmoe.planning.cluster_sim import Calibration, RoutingStats
from locmoe.planning.step_model import Target, TargetModel, step_time

MODEL = TargetModel(
    d_model=1000,
    d_ff=4000,
    d_expert=2000,
    num_experts=4,
    top_k=2,
    n_layers=2,
    moe_layers=1,
    vocab_size=100,
    seq_len=500,
    tokens_per_micro=1000,
    micro_batches=2,
    dense_params=10_000_000,
    expert_params=4_000_000,
)
# alpha 0: one measured point; NVLink 100 GB/s; NIC 10 GB/s, 1 us per peer
CAL = Calibration(
    dense_tflops=100.0,
    grouped_tflops=50.0,
    a2a_sizes_mb=(1.0,),
    a2a_gbps=(100.0,),
    nic_gbps=10.0,
    nic_peer_latency_us=1.0,
)
TARGET = Target("t 2x2", 2, 2, CAL, dense_tflops=10.0, hbm_gbps=1000.0, source="test")


def test_a_hand_computed_step():
    stats = RoutingStats(on_rank=0.25, in_node=0.25, cross_node=0.5, dropped=0.0, max_load=1.2, top_k=2)
    t = step_time(MODEL, stats, "flat", TARGET)
    # dense: per token 2 layers x (8e6 + 4*500*1000) + 1 dense layer x 6*1000*4000 + 1 router 2*1000*4 + LM head 2e5
    per_token = 2 * (8e6 + 2e6) + 24e6 + 8e3 + 2e5
    assert t["dense_ms"] == pytest.approx(3 * 2 * 1000 * per_token / 10e12 * 1e3)
    # experts: busiest device 1000 tokens x 2 copies x 1.2 rows x 6*1000*2000 FLOP at 50 TFLOP/s, x3 (fwd+bwd), x2 micro
    assert t["experts_ms"] == pytest.approx(3 * 2 * 1000 * 2 * 1.2 * 12e6 / 50e12 * 1e3)
    # flat all-to-all: in-node 1000*2*0.25*2000 B = 1 MB over NVLink (10 us), cross 2 MB over the NIC with 2 peers
    # (200 us + 2 us): max = 202 us; dispatch + combine, forward + backward, x2 micro-batches
    assert t["all_to_all_ms"] == pytest.approx(2 * 2 * 2 * 202e-6 * 1e3)
    # gradients: dense 40 MB ring over 4 ranks across nodes at 10 GB/s; experts live once (no reduction)
    assert t["grad_reduce_ms"] == pytest.approx(2 * 3 / 4 * 40e6 / 10e9 * 1e3)
    # AdamW: 28 B per local parameter (10M dense + 1M of experts) at 1 TB/s
    assert t["optimizer_ms"] == pytest.approx(28 * 11e6 / 1e12 * 1e3)
    assert t["placement_ms"] == 0
    parts = ("dense_ms", "experts_ms", "all_to_all_ms", "grad_reduce_ms", "optimizer_ms")
    assert t["step_ms"] == pytest.approx(sum(t[p] for p in parts))


def test_hierarchical_keeps_in_node_copies_off_the_nic():
    """All copies in the node: hierarchical and flat cost the same NVLink time, and nothing crosses."""
    stats = RoutingStats(on_rank=0.5, in_node=0.5, cross_node=0.0, top_k=2)
    flat, hier = step_time(MODEL, stats, "flat", TARGET), step_time(MODEL, stats, "hierarchical", TARGET)
    assert (
        flat["all_to_all_ms"] == pytest.approx(hier["all_to_all_ms"]) == pytest.approx(2 * 2 * 2 * 20e-6 * 1e3)
    )  # 2 MB in the node at 100 GB/s


def test_affinity_placement_pays_for_the_blocks_it_runs_again():
    """Forward only, over every token: the blocks below the first MoE layer (1 here: attention + FFN), that
    layer's attention and its router, at the dense rate; ``embedding`` only the router."""
    stats = RoutingStats(on_rank=1.0, in_node=0.0, cross_node=0.0, top_k=2)
    model = TargetModel(**{**MODEL.__dict__, "first_moe_layer": 1})
    extra = step_time(model, stats, "flat", TARGET, "affinity")["placement_ms"]
    assert extra == pytest.approx(2 * 1000 * (2 * 10e6 + 24e6 + 8e3) / 10e12 * 1e3)
    assert step_time(model, stats, "flat", TARGET, "embedding")["placement_ms"] == pytest.approx(
        2 * 1000 * 8e3 / 10e12 * 1e3
    )
