"""What torchtitan 0.3.0 needs from torch that torch 2.11 (the GPU machines' image) lacks; ``apply()`` before
the first ``import torchtitan``. Each shim is a no-op where torch already has the thing.

- ``torch.distributed.fsdp.DataParallelMeshDims``: torchtitan imports it at module level
  (``torchtitan/distributed/full_dtensor.py``) and builds one only on multi-GPU meshes; on one rank
  (``resolve_fsdp_mesh`` with a mesh of size 1) it passes None. A plain dataclass stands in.
- ``create_block_mask(..., separate_full_blocks=...)``: torchtitan's flex-attention mask passes it (the
  kernel visits full blocks first); torch 2.11's has no such keyword and already separates full blocks,
  so the shim drops it. It must be in place before ``torchtitan.models.common.attention`` is imported,
  which compiles ``create_block_mask`` at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Optional, Union


def apply() -> list[str]:
    """Install the shims torch needs; returns the names of those installed (for the row's note)."""
    import torch.distributed.fsdp as fsdp
    import torch.nn.attention.flex_attention as flex

    installed = []
    if not hasattr(fsdp, "DataParallelMeshDims"):

        @dataclasses.dataclass(frozen=True)
        class DataParallelMeshDims:
            shard: Optional[Union[str, tuple]] = None
            replicate: Optional[str] = None

        fsdp.DataParallelMeshDims = DataParallelMeshDims
        installed.append("DataParallelMeshDims")
    original = flex.create_block_mask
    if "separate_full_blocks" not in inspect.signature(original).parameters:

        @functools.wraps(original)
        def create_block_mask(*args, separate_full_blocks: bool = True, **kwargs):
            return original(*args, **kwargs)

        flex.create_block_mask = create_block_mask
        installed.append("create_block_mask(separate_full_blocks)")
    return installed
