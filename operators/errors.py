"""Typed errors of the operator layer (all are ValueErrors, so callers may catch either)."""


class OperatorInputError(ValueError):
    """A tensor handed to an operator has the wrong type, shape, dtype or device."""


class GeometryError(ValueError):
    """A scan geometry is impossible or does not match the data."""


class BackendUnavailableError(RuntimeError):
    """The requested projection backend cannot run here (e.g. astra-cuda without a GPU)."""
