"""The sentence that ends a job: who stopped it, from the ranks' heartbeats and states in the store."""

from __future__ import annotations

import re
from typing import Optional

from locmoe.errors import LocMoEError


class RankFailure(LocMoEError):
    """A rank of the job stopped responding or ended with an error (raised where a failure is seen outside
    :class:`Liveness`, e.g. by MindSpore's scheduler)."""


def describe(err: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception, without gloo's ``[file.cc:123]`` source prefix."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", lines[0] if lines else "")
    return f"{type(err).__name__}: {text[:limit]}"


def rank_list(ranks: list) -> str:
    shown = ", ".join(map(str, ranks[:8])) + (", ..." if len(ranks) > 8 else "")
    return f"rank {shown}" if len(ranks) == 1 else f"ranks {shown}"


def heartbeat_age(beat: Optional[str], now: float) -> Optional[float]:
    """Seconds since a ``"count wall_time"`` beat was written (wall clocks of two hosts: NTP-close)."""
    if beat is None:
        return None
    try:
        return max(0.0, now - float(beat.split()[1]))
    except (AttributeError, IndexError, ValueError):
        return None


def blame(first: list, second: list, me: int, now: float) -> Optional[str]:
    """Who stopped the job, from two snapshots ``[(beat, state)] * world`` taken a few beats apart: ranks whose
    beat did not move, else ranks that ended with their own error, else a verdict another rank ended with,
    else ranks that already left; None when every other rank is alive."""
    world = len(second)
    others = [r for r in range(world) if r != me]
    state = {r: second[r][1] or "" for r in others}
    silent = [r for r in others if not state[r] and first[r][0] == second[r][0]]
    if silent:
        ages = [a for a in (heartbeat_age(second[r][0], now) for r in silent) if a is not None]
        since = f"no heartbeat for {max(ages):.0f} s" if ages else "no heartbeat at all"
        return f"{rank_list(silent)} of {world} stopped responding ({since}: stalled or killed)"
    errored = [r for r in others if state[r].startswith("error: ")]
    if errored:
        return f"{rank_list(errored)} of {world} ended with an error ({state[errored[0]][7:]})"
    ended = [state[r][7:] for r in others if state[r].startswith("ended: ")]
    if ended:
        return ended[0]
    left = [r for r in others if state[r]]
    return f"{rank_list(left)} of {world} left the job early" if left else None
