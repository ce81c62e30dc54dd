"""The whole training step — forward, backward, gradient clip, AdamW — as one CUDA graph, replayed each step.

On one device the step has fixed shapes and no host sync (``backends.torch.dispatcher``), so after a few
eager steps it can be captured once and replayed: the host then launches one graph instead of thousands of
kernels, and the GPU no longer waits for Python between them (on ``pangu_sigma_small`` the host-bound gap
was a third of the step). Replay runs exactly the captured kernels on the same buffers: every step computes
what the eager step computes.

What makes a step replayable: the batch is copied into fixed input buffers, the learning rate is a device
tensor that the schedule fills before each replay (AdamW ``capturable``), and nothing in the step reads a
device value on the host. Steps that do (expert parallelism's all-to-all sizes, the ``cone`` bound rule, expert
choice's variable copy count, the per-expert loop) stay eager: :func:`graph_blockers` says why.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

WARMUP_STEPS = 3  # eager steps before the capture: compile, autotune and lazy CUDA state happen there


def graph_blockers(cfg, ctx, model) -> list[str]:
    """Why this job's step cannot be one CUDA graph (empty: it can)."""
    why = []
    if ctx.device.type != "cuda":
        why.append(f"the device is {ctx.device.type}, not CUDA")
    if ctx.world_size > 1:
        why.append("expert parallelism reads the all-to-all sizes on the host")
    moe = cfg.moe
    if model.moe_layers:
        if moe.router.kind == "expert_choice":
            why.append("expert choice gives each rank a data-dependent number of copies")
        if moe.capacity.mode == "bound" and moe.capacity.bound_rule == "cone":
            why.append("the cone bound rule computes its sphere caps on the host (scipy)")
        if moe.expert_impl == "loop":
            why.append("moe.expert_impl = loop reads each expert's row count on the host")
    return why


class GraphedStep:
    """``step(i)`` → (lm loss, auxiliary objective, MoE metrics, gradient norm) of optimiser step ``i``, the
    same as ``train_step``: the first ``WARMUP_STEPS`` calls run ``eager_step`` (a real training step each),
    the next captures ``body`` (the step after its learning rate and batch are set) and replays it, and every
    call from then on only refills the inputs and replays. The returned tensors are the graph's own outputs:
    read them before the next call (the training loop reads them on logging steps)."""

    def __init__(self, eager_step: Callable, body: Callable, optimizer, batches, cfg, log: Callable = print):
        self.eager_step, self.body, self.optimizer, self.log = eager_step, body, optimizer, log
        self.batches, self.cfg = batches, cfg
        self.calls, self.failed = 0, False
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: list = []
        self.outputs = None
        make_lr_tensor(optimizer)

    def __call__(self, step: int):
        self.calls += 1
        if self.calls <= WARMUP_STEPS or self.failed:
            return self.eager_step(step)
        if self.graph is None:
            try:
                self._capture(step)
            except RuntimeError as err:
                # a capture records kernels without running them, so nothing of this step happened yet
                self.failed, self.graph = True, None
                self.log(
                    f"train.cuda_graph: the step could not be captured ({str(err).splitlines()[0]}); it stays eager"
                )
                return self.eager_step(step)
        else:
            self._load_inputs(step)
        assert self.graph is not None and self.outputs is not None  # captured above
        self.graph.replay()
        return self.outputs

    def _load_inputs(self, step: int) -> None:
        from backends.torch.optim import set_lr
        from locmoe.training.schedule import lr_at

        set_lr(self.optimizer, lr_at(step, self.cfg.train))
        for micro, buffers in enumerate(self.inputs):
            for buf, value in zip(buffers, self.batches.get(step, micro)):
                buf.copy_(value, non_blocking=True)

    def _capture(self, step: int) -> None:
        """Record the step on a side stream (capture records kernels without running them: the replay that
        follows is this step's real work)."""
        self.inputs = [
            tuple(torch.empty_like(t) for t in self.batches.get(step, micro))
            for micro in range(self.cfg.train.grad_accum)
        ]
        self._load_inputs(step)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side), torch.cuda.graph(self.graph, stream=side):
            self.outputs = self.body(self.inputs)
        torch.cuda.current_stream().wait_stream(side)


def make_lr_tensor(optimizer: torch.optim.Optimizer) -> None:
    """AdamW reads its learning rate from a device tensor (filled by ``set_lr``), so that a captured step uses
    each replay's value instead of the one it was captured with."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        group["capturable"] = True
