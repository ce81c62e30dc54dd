"""The one error every config rule raises: the loader's type and bound checks, the cross-field rules of
``checks`` and ``router_checks``, the reference resolution of ``shipped``."""

from __future__ import annotations

from locmoe.errors import LocMoEError


class ConfigError(LocMoEError):
    """A config value that is unknown, of the wrong type, or out of range."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
