"""Expert placement from routing traces (numpy + scipy): the trace format, inter-layer affinity, ExFlow's
integer program, GRACE grouping + replication + replica routing, written as PlacementTables.

Only the trace API is imported here, so that model code recording traces pulls in nothing else:
``from locmoe.placement import TraceWriter``. The planners live in their own modules (``exflow``,
``grace``, ...); see docs/planning.md.
"""

from locmoe.placement.trace import (
    FINGERPRINT_KEYS,
    RoutingTrace,
    TraceError,
    TraceWriter,
    fingerprint_from_config,
    load_trace,
)

__all__ = ["FINGERPRINT_KEYS", "RoutingTrace", "TraceError", "TraceWriter", "fingerprint_from_config", "load_trace"]
