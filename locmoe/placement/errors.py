"""The error every placement planner raises for input it cannot plan with (it names the value and what is allowed)."""

from locmoe.errors import LocMoEError


class PlacementError(LocMoEError):
    """A placement request that cannot be satisfied: experts that do not divide over the devices, a load
    limit no placement meets, a budget too small, an instance too large for the chosen solver."""
