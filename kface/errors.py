"""The one exception type users see.

Every failure that a user can cause or fix is a :class:`KfaceError` carrying a one-line message and an
exit code: 2 for bad input or usage, 1 for a runtime failure. The CLI prints ``error: <message>`` and
exits with that code; library users catch the exception.
"""
from __future__ import annotations

INPUT_ERROR = 2
RUNTIME_ERROR = 1


class KfaceError(Exception):
    """A failure with a one-line, user-facing message."""

    exit_code = RUNTIME_ERROR

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(KfaceError):
    """Bad input or usage: a missing file, an unreadable image, no face, a bad option value."""

    exit_code = INPUT_ERROR


class NoFaceError(InputError):
    """An image in which no face was found (and no fallback was allowed)."""
