"""The error hierarchy. Every error about an input names the file and says what is wrong with it.

``Otf2dError`` is the root; ``InputError`` (also a ``ValueError``) covers bad input files, and its
subclasses let callers tell the cases apart without parsing messages: a streamer must distinguish
"still being written" (``IncompleteStackError``) from "corrupt" (the others).
"""

from __future__ import annotations

from os import PathLike


class Otf2dError(Exception):
    """Root of every error otf2d raises on purpose."""


class InputError(Otf2dError, ValueError):
    """A file (or an in-memory input) cannot be used; the message names it and says why.

    Parameters
    ----------
    path
        The offending file, or ``None`` for in-memory input.
    what
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | PathLike[str] | None, what: str) -> None:
        self.path = None if path is None else str(path)
        self.what = what
        super().__init__(f"{self.path}: {what}" if self.path is not None else what)


class MissingColumnError(InputError):
    """A metadata table lacks a column that is required."""


class MissingStackError(InputError):
    """A particle file refers to an image stack that does not exist."""


class IndexOutOfRangeError(InputError):
    """A particle index points past the end of its stack."""


class IncompleteStackError(InputError):
    """A stack holds fewer bytes than its header claims (truncated, or still being written)."""


class IncompleteFileError(InputError):
    """A metadata file (STAR, ``.cs``) is cut short: caught while it is still being written."""


class ValueRangeError(InputError):
    """A value is outside what is physically possible (kV, Cs, amplitude contrast, index, ...)."""


class UnsafePathError(InputError):
    """A stack path leaves the project directory (``../..``, or absolute elsewhere)."""


class NonFiniteError(InputError):
    """Images contain NaN or Inf pixels."""


class PixelSizeError(InputError):
    """No usable pixel size: zero or missing everywhere it may come from."""


class BoxSizeMismatchError(InputError):
    """Images of unequal box size were put into one batch."""


class UnsupportedFormatError(InputError):
    """A file in a format otf2d cannot read (the message names the format and what to do)."""


class ConfigError(InputError):
    """A configuration file or option is invalid."""


class DecodeError(InputError):
    """A wire message failed validation."""


__all__ = [
    "BoxSizeMismatchError",
    "ConfigError",
    "DecodeError",
    "IncompleteFileError",
    "IncompleteStackError",
    "IndexOutOfRangeError",
    "InputError",
    "MissingColumnError",
    "MissingStackError",
    "NonFiniteError",
    "Otf2dError",
    "PixelSizeError",
    "UnsafePathError",
    "UnsupportedFormatError",
    "ValueRangeError",
]
