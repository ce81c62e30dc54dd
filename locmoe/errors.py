"""The one base class of every user-facing error: the CLI turns these into a message and exit code 2.

Each subsystem raises its own subclass (ConfigError, DataError, ...) so tests and callers can tell them apart,
while anything that is *not* a LocMoEError stays a traceback: that is a bug, not bad input.
"""


class LocMoEError(ValueError):
    """Bad input or state the user can fix; the message names the field, file or value at fault."""
