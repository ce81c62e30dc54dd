"""The hierarchical all-to-all's two stages, simulated in numpy for every rank, deliver exactly what the flat
all-to-all delivers, in the same (source-major) order."""

import numpy as np
import pytest

from locmoe.parallel.topology import Topology
from locmoe.routing.hierarchical_splits import HierarchicalSplits


def exchange(buffers, sends, recv_order):
    """Each rank splits its buffer by ``sends[r]`` (one chunk per peer in ``recv_order[r]``'s numbering) and
    each rank concatenates what it gets in peer order."""
    out = {r: [] for r in buffers}
    for r, buf in buffers.items():
        start = 0
        for peer, n in zip(recv_order[r], sends[r]):
            out[peer].append((r, buf[start : start + n]))
            start += n
        assert start == len(buf)
    return {p: [row for _, chunk in sorted(parts, key=lambda x: x[0]) for row in chunk] for p, parts in out.items()}


@pytest.mark.parametrize("N, G", [(2, 2), (2, 3), (3, 2), (1, 4), (4, 1)])
@pytest.mark.parametrize("seed", range(3))
def test_two_stages_equal_the_flat_exchange(N, G, seed):
    topo, W = Topology(N, G), N * G
    S = np.random.default_rng(seed).integers(0, 4, size=(W, W))
    send = {r: [(r, d, i) for d in range(W) for i in range(S[r, d])] for r in range(W)}  # destination-major
    h = {r: HierarchicalSplits.of(S, r, topo) for r in range(W)}
    node_peers = {r: [(r // G) * G + j for j in range(G)] for r in range(W)}  # stage 1: my node
    index_peers = {r: [n * G + r % G for n in range(N)] for r in range(W)}  # stage 2: my local index
    stage1 = exchange(
        {r: [send[r][i] for i in h[r].perm1] for r in range(W)}, {r: h[r].send1 for r in range(W)}, node_peers
    )
    assert all(len(stage1[r]) == sum(h[r].recv1) for r in range(W))
    stage2 = exchange(
        {r: [stage1[r][i] for i in h[r].perm2] for r in range(W)}, {r: h[r].send2 for r in range(W)}, index_peers
    )
    for r in range(W):
        assert len(stage2[r]) == sum(h[r].recv2)
        flat = [row for s in range(W) for row in send[s] if row[1] == r]  # source-major
        assert stage2[r] == flat
