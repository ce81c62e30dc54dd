"""The user's path of ``train_throughput.py``: ``locmoe train``'s own loop timed as a user runs it, and how a
stepper ran its step (one CUDA graph, eager, or a capture that failed).

``user_row`` calls ``backends.torch.train.train`` in this process (compiled kernels are shared with the
bench's rows) on a fresh ``train.out_dir``, with logging every ``logging.log_every`` steps (tensorboard on
where tensorboardX is importable), validation every ``--user-eval-every`` and a checkpoint every
``--user-ckpt-every`` steps; it reads back the tokens/s of ``metrics.jsonl`` (what the log lines print:
training time only) and times the loop's wall clock from the end of one logged step to the end of the last
(``locmoe.training.loop.RunRecord.end_step``, where the host has caught up with the device), validations and
checkpoints included.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import torch

GRAPH_LINE = "train.cuda_graph:"  # the stepper's one line when the step stays eager or its capture fails


class Lines(contextlib.redirect_stdout):
    """Echo stdout and keep its lines (the stepper's ``train.cuda_graph:`` line, the loop's log lines)."""

    def __init__(self):
        self.lines: list[str] = []
        self._out, self._part = sys.stdout, ""
        super().__init__(self)

    def write(self, text: str) -> int:
        self._out.write(text)
        self._part += text
        *done, self._part = self._part.split("\n")
        self.lines += done
        return len(text)

    def flush(self) -> None:
        self._out.flush()


def graph_state(stepper, lines: list[str], device) -> str:
    """How a stepper ran its step: ``captured`` (one CUDA graph, replayed), ``capture failed: ...``, or
    ``eager`` with the reason the stepper gave (or the device)."""
    from backends.torch.step_graph import GraphedStep

    said = [ln.strip() for ln in lines if ln.strip().startswith(GRAPH_LINE)]
    if isinstance(stepper, GraphedStep):
        if stepper.failed:
            return "capture failed: " + (said[0][len(GRAPH_LINE) :].strip() if said else "(no message)")
        return "captured" if stepper.graph is not None else "eager (not captured yet)"
    if said:
        return "eager: " + said[0][len(GRAPH_LINE) :].strip()
    return f"eager ({device.type})" if device.type != "cuda" else "eager (train.cuda_graph=false or blocked)"


def user_row(args, row: str, job: Callable) -> dict:
    """``locmoe train``'s own loop (``backends.torch.train.train``) on this row's job (``job(args, row,
    extra)`` builds it), with logging, validation and checkpoints on: the tokens/s its log lines print, and
    tokens over wall-clock time from step ``args.user_warmup`` on."""
    import backends.torch.train as torch_train
    from locmoe.training import loop

    steps = args.user_steps
    base = job(args, row)
    out_dir = Path(tempfile.mkdtemp(prefix="train_throughput_")) / row
    try:
        import tensorboardX  # noqa: F401

        tensorboard = True
    except ImportError:
        tensorboard = False
    cfg = job(
        args,
        row,
        extra=[
            f"train.steps={steps}",
            f"train.warmup_steps={min(base.train.warmup_steps, steps)}",
            f"train.eval_every={args.user_eval_every}",
            f"train.ckpt_every={args.user_ckpt_every}",
            f"train.out_dir={out_dir}",
            f"logging.tensorboard={str(tensorboard).lower()}",
            "export.at_end=false",
            *args.user_set,
        ],
    )
    ends, made = {}, []
    end_step, make = loop.RunRecord.end_step, torch_train.make_stepper

    def timed_end_step(self, done, *a, **k):  # after the step's log, validation and checkpoint
        end_step(self, done, *a, **k)
        ends[done] = time.perf_counter()

    def kept_stepper(*a, **k):
        made.append(make(*a, **k))
        return made[-1]

    with (
        Lines() as lines,
        mock.patch.object(loop.RunRecord, "end_step", timed_end_step),
        mock.patch.object(torch_train, "make_stepper", kept_stepper),
    ):
        torch_train.train(cfg)
    logged = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    shutil.rmtree(out_dir.parent, ignore_errors=True)  # its checkpoints: GBs a row at pangu_sigma_small
    logged = [r for r in logged if "tokens_per_s" in r]
    # from the first logged step past the warm-up (a logged step reads the loss: the host has caught up there)
    start = min((r["step"] for r in logged if r["step"] >= args.user_warmup), default=None)
    out: dict[str, Any] = dict(
        user_steps=steps, user_graph=graph_state(made[0], lines.lines, torch.device(made_device(cfg)))
    )
    if start is None or start >= steps:
        return dict(out, user_note=f"no logged step past {args.user_warmup} before step {steps}")
    after = [r for r in logged if r["step"] > start]
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len * cfg.train.grad_accum
    wall = ends[steps] - ends[start]
    previous = {b["step"]: a["step"] for a, b in zip(logged, logged[1:])}
    training = sum(r["step_time_s"] * (r["step"] - previous[r["step"]]) for r in after)
    out.update(
        user_tokens_per_s=statistics.median(r["tokens_per_s"] for r in after),
        user_wall_tokens_per_s=tokens_per_step * (steps - start) / wall,
        user_window=f"steps {start + 1}-{steps}",
        user_pause_s=wall - training,  # validations, checkpoints (and logging's host reads outside the clock)
        user_tensorboard=tensorboard,
    )
    return out


def made_device(cfg) -> str:
    return "cuda" if cfg.parallel.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
