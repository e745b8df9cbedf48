"""Typed errors of ctflow.  The CLI turns each into a one-line message and a non-zero exit."""


class CtflowError(Exception):
    """Base class of every error ctflow raises on purpose."""


class InputError(CtflowError, ValueError):
    """An input file or array is unreadable, inconsistent or of the wrong kind."""


class OutputError(CtflowError, OSError):
    """An output cannot be written (missing or read-only folder, existing file, ...)."""


class PriorError(CtflowError, ValueError):
    """A prior name is unknown, a checkpoint is corrupt, or it does not fit the problem."""


class MethodError(CtflowError, ValueError):
    """An unknown reconstruction method or an invalid option for it."""


class NetworkError(CtflowError, ConnectionError):
    """A DICOM peer is unreachable, refuses the association, or did not store everything."""
