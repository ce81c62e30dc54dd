"""Errors of the serving path: each names the value at fault and what is allowed."""

from locmoe.errors import LocMoEError


class InferenceError(LocMoEError):
    """Bad input to inference: a prompt longer than the context, a deployment that does not fit, ..."""


class ProfileError(InferenceError):
    """A calibration profile that is missing, corrupt, from another format version, or unusable."""
