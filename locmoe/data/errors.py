"""The error of the data package (its own module so that every data module can raise it without cycles)."""

from locmoe.errors import LocMoEError


class DataError(LocMoEError):
    """A data source that is missing, empty or malformed; the message names the file."""

    line: int  # a bad JSONL row's line and what is wrong with it (set by sources.row_error)
    reason: str
