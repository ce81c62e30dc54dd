"""The one-token decode step captured once as a CUDA graph and replayed: one launch per step instead of a
few hundred kernel launches from Python. Possible because :meth:`KVDecoder.step` has fixed shapes (the
whole preallocated cache, masked) and never waits for the host; the inputs are copied into static tensors
before each replay and the logits are read from the graph's own output tensor.
"""

from __future__ import annotations

from typing import Optional

import torch

from backends.torch.inference.kv_decoder import KVDecoder


def graphable(decoder: KVDecoder) -> tuple[bool, str]:
    """(can the step be captured, why not)."""
    if decoder.cache.k.device.type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if not all(decoder.fast_moe.values()):
        return False, "the MoE layers are expert-parallel over several processes (collectives sync the host)"
    return True, ""


class GraphedStep:
    def __init__(self, decoder: KVDecoder, domain: Optional[torch.Tensor], warmup: int = 2):
        """Warm up on a side stream (allocations and lazily built constants happen outside the capture),
        then capture ``decoder.step``. The warm-up writes the last cache slot, which every later step
        overwrites before any query may read it."""
        dev = decoder.cache.k.device
        self.tokens = torch.zeros(decoder.batch, dtype=torch.long, device=dev)
        self.slot = torch.full((1,), decoder.cache.capacity - 1, dtype=torch.long, device=dev)
        self.domain = None if domain is None else domain.clone()
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                decoder.step(self.tokens, self.slot, self.domain)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decoder.step(self.tokens, self.slot, self.domain)

    def __call__(self, tokens: torch.Tensor, slot: torch.Tensor, domain: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Same contract as ``KVDecoder.step``; the returned logits are overwritten by the next replay."""
        if (domain is None) != (self.domain is None):
            raise ValueError("the graph was captured with" + ("out" if self.domain is None else "") + " a domain")
        if domain is not None:
            assert self.domain is not None  # checked above: captured with a domain
            self.domain.copy_(domain)
        self.tokens.copy_(tokens)
        self.slot.copy_(slot)
        self.graph.replay()
        return self.logits
