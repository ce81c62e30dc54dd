"""Where a training step's device time goes, by phase, from one ``torch.profiler`` trace.

The model marks its forward phases with ``record_function`` (``attention``, ``dense_ffn``, ``moe/router``,
``moe/capacity+admission``, ``moe/permute``, ``moe/experts``, ``moe/all_to_all``, ``moe/combine``). A
kernel launched inside such a range counts for that phase. A backward kernel counts for the phase of the
forward op it differentiates: the autograd engine's ``evaluate_function`` events carry the forward op's
sequence number, and the forward op sits inside a phase range. The optimizer is ``Optimizer.step``'s range;
what is left of the step's wall time is host/idle (the device waiting for the host).
"""

from __future__ import annotations

import bisect
from collections import defaultdict

PHASES = (
    "attention",
    "dense_ffn",
    "moe/router",
    "moe/capacity+admission",
    "moe/permute",
    "moe/experts",
    "moe/all_to_all",
    "moe/combine",
)
OPTIMIZER = "optimizer"
OTHER = "other (embedding, loss, grad clip)"


def phase_times(prof, wall_ms: float, steps: int) -> dict[str, float]:
    """Device milliseconds per step of each phase, plus ``host/idle`` (wall time no kernel ran) and the
    device time the attribution could not place (kernels the profiler did not link to a host op)."""
    events = list(prof.events())
    ranges = _phase_ranges(events)
    seq_phase = _forward_sequence_phases(events, ranges)
    out: dict[str, float] = defaultdict(float)
    for ev in events:
        kernels = _own_kernel_ms(ev)
        if kernels == 0.0:
            continue
        out[_phase_of(ev, ranges, seq_phase)] += kernels
    attributed = sum(out.values())
    device = sum(ev.time_range.elapsed_us() for ev in events if _is_kernel(ev)) / 1e3
    result = {k: v / steps for k, v in out.items()}
    result["unattributed device"] = max(device - attributed, 0.0) / steps
    result["host/idle"] = max(wall_ms - max(device, attributed) / steps, 0.0)
    return result


def _is_kernel(ev) -> bool:
    """A kernel, copy or fill on the device (not the device-side span of a ``record_function`` range)."""
    kind = getattr(ev, "device_type", None)
    on_device = kind is not None and str(kind).endswith(("CUDA", "PrivateUse1"))
    annotation = ev.name in PHASES or ev.name.startswith(("Optimizer.", "ProfilerStep"))
    return on_device and not annotation


def _phase_ranges(events) -> dict[int, list]:
    """thread -> sorted [(start_us, end_us, phase)] of the phase markers and the optimizer step."""
    by_thread: dict[int, list] = defaultdict(list)
    for ev in events:
        name = ev.name
        if name.startswith("Optimizer.step"):
            name = OPTIMIZER
        if name in PHASES or name == OPTIMIZER:
            by_thread[ev.thread].append((ev.time_range.start, ev.time_range.end, name))
    return {t: sorted(r) for t, r in by_thread.items()}


def _enclosing(ranges: dict, thread: int, t: float):
    """The innermost phase range of ``thread`` containing time ``t`` (phases do not overlap), else None."""
    rs = ranges.get(thread, [])
    i = bisect.bisect_right(rs, (t, float("inf"), "")) - 1
    while i >= 0:
        start, end, name = rs[i]
        if start <= t <= end:
            return name
        i -= 1
        if i >= 0 and rs[i][1] < t:
            break
    return None


def _forward_sequence_phases(events, ranges) -> dict[int, str]:
    """Autograd sequence number of every forward op inside a phase -> that phase."""
    seq: dict[int, str] = {}
    for ev in events:
        if ev.sequence_nr >= 0 and not ev.name.startswith("autograd::engine"):
            phase = _enclosing(ranges, ev.thread, ev.time_range.start)
            if phase is not None:
                seq.setdefault(ev.sequence_nr, phase)
    return seq


def _phase_of(ev, ranges, seq_phase) -> str:
    phase = _enclosing(ranges, ev.thread, ev.time_range.start)
    if phase is not None:
        return phase
    node = ev
    while node is not None:  # a backward kernel: find the engine event that launched it
        if node.name.startswith("autograd::engine::evaluate_function") and node.sequence_nr >= 0:
            return seq_phase.get(node.sequence_nr, OTHER)
        node = node.cpu_parent
    return OTHER


def _own_kernel_ms(ev) -> float:
    """Device time of the kernels this op launched itself (not its children's), in ms."""
    total = 0.0
    for k in getattr(ev, "kernels", []):
        total += k.duration
    return total / 1e3
