"""The error every planner raises for input it cannot plan with (it names the value and what is allowed)."""

from locmoe.errors import LocMoEError


class PlanningError(LocMoEError):
    """A deployment or simulation request that cannot be satisfied: an infeasible budget, an unknown
    device kind, a request no instance can hold, a malformed profile."""
