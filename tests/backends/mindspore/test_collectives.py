"""The collective adapter in one process: groups of one, byte counting, and the Ascend path's clear error
when the native all-to-all is missing. The multi-worker behaviour is tested under msrun
(``test_moe_distributed.py::test_collective_adapter``)."""

import numpy as np
import pytest
from mindspore import Tensor
from mindspore.communication import comm_func

from backends.mindspore import collectives
from backends.mindspore.collectives import Group, TrafficCounter, all_gather_rows, all_reduce, all_to_all
from backends.mindspore.distributed import setup_runtime

setup_runtime("CPU")


def test_group_of_one_is_the_identity_and_counts_no_bytes():
    one = Group(None, (0,), (0,), 0)
    x = Tensor(np.arange(6, dtype=np.float32).reshape(3, 2))
    counter = TrafficCounter()
    np.testing.assert_array_equal(all_to_all(x, [3], [3], one, counter, "flat").asnumpy(), x.asnumpy())
    assert (counter.intra_node, counter.cross_node, counter.calls, counter.by_stage) == (0, 0, 1, {"flat": [0, 0]})
    np.testing.assert_array_equal(all_gather_rows(x, one).asnumpy(), x.asnumpy())
    np.testing.assert_array_equal(all_reduce(x, one).asnumpy(), x.asnumpy())


def test_traffic_counter_splits_links_and_skips_self_sends():
    counter = TrafficCounter()
    # me = rank 1 on node 0; peers: rank 0 (node 0), rank 1 (me), rank 2 and 3 (node 1)
    counter.add([10, 20, 30, 40], [0, 0, 1, 1], 0, [0, 1, 2, 3], 1, "stage1")
    counter.add([1, 0, 0, 0], [0, 0, 1, 1], 0, [0, 1, 2, 3], 1, "stage1")
    assert (counter.intra_node, counter.cross_node, counter.calls) == (11, 70, 2)
    assert counter.by_stage == {"stage1": [11, 70]}
    counter.reset()
    assert (counter.intra_node, counter.cross_node, counter.calls, counter.by_stage) == (0, 0, 0, {})


def test_missing_native_all_to_all_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(collectives, "native_collectives", lambda: True)
    monkeypatch.delattr(comm_func, "all_to_all_single_with_output_shape")
    pair = Group("g", (0, 1), (0, 0), 0, (0, 1), 2)
    with pytest.raises(
        RuntimeError,
        match="has no communication.comm_func.all_to_all_single_with_output_shape, "
        "which the Ascend dispatch uses; install mindspore>=2.10,<2.11",
    ):
        all_to_all(Tensor(np.zeros((2, 4), np.float32)), [1, 1], [1, 1], pair)
