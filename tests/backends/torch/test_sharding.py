"""The row arithmetic of ``backends.torch.sharding`` is FSDP2's: ``torch.chunk`` pieces along dim 0."""

import torch

from backends.torch.sharding import chunk_range, shard_rows


def test_chunk_range_is_torch_chunk():
    for rows in range(0, 13):
        for parts in range(1, 6):
            pieces = torch.chunk(torch.arange(rows), parts) if rows else ()
            for index in range(parts):
                start, stop = chunk_range(rows, parts, index)
                expected = pieces[index].tolist() if index < len(pieces) else []
                assert list(range(start, stop)) == expected, (rows, parts, index)
                assert shard_rows(torch.arange(rows), parts, index).tolist() == expected
