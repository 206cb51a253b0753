"""Exception hierarchy.

Every error segflow raises on purpose derives from :class:`SegflowError`; each
subclass also inherits the builtin that fits, so callers can catch either.
The command line prints ``str(error)`` of a SegflowError as one line and exits
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SegflowError(Exception):
    """Root of all errors raised on purpose by segflow."""


class ReaderError(SegflowError, OSError):
    """An input file is missing, unreadable, truncated or not a raster/volume."""


class ConfigError(SegflowError, ValueError):
    """A parameter or option has a value segflow cannot use."""


class ModelError(SegflowError, ValueError):
    """A model file is invalid, unsafe, or does not fit the input."""


class OutputError(SegflowError, OSError):
    """An output location cannot be written, or an existing store does not match."""


class InputDataError(SegflowError, ValueError):
    """The input opened fine but its content cannot be segmented (e.g. all nodata)."""


class RegionError(SegflowError, RuntimeError):
    """Work on one region of a run failed (a full disk, a device error, a bug).

    The message names the input, the region and the cause; the store is left
    incomplete and resumable. ``retryable`` is True where the cause may pass by
    itself (a network file system hiccup), so an orchestrator may try again.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def one_line(error: BaseException) -> str:
    """The error's message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(error).split())
