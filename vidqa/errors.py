"""The one exception type that the CLI turns into a single line on stderr and a non-zero exit."""

from __future__ import annotations


class VidqaError(Exception):
    """A user-facing failure: bad input, missing model, unfit context.

    The message must be one line that says what is wrong and, where possible, what to do.
    The CLI prints ``error: <message>`` and exits with ``exit_code``; no traceback is shown.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(" ".join(str(message).split()))  # force one line
        if exit_code is not None:
            self.exit_code = exit_code


class VideoError(VidqaError):
    """The input file is missing, unreadable, not a video, or has no frames to sample."""


class ModelError(VidqaError):
    """The model directory or hub id is missing, incomplete or of an unknown kind."""


class ContextError(VidqaError):
    """The question (plus the minimum of one frame) cannot fit in the model's context."""


class UsageError(VidqaError):
    """An option or argument has a value vidqa refuses (out of range, not finite, not valid text)."""

    exit_code = 2
