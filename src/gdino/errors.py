"""The one exception type that user-facing code raises for bad input.

The CLI turns a :class:`GdinoError` into a one-line message and a non-zero exit code; library
users can catch it to tell "your input is wrong" apart from bugs.
"""


class GdinoError(Exception):
    """A problem with the user's input (file, checkpoint, prompt, option), described in one line."""


class CheckpointError(GdinoError):
    """A weights file or folder that cannot be loaded into the chosen architecture."""


class InputImageError(GdinoError):
    """An image that is missing, unreadable, truncated or too large."""


class PromptError(GdinoError):
    """A prompt or class list that names nothing the model can look for."""


def first_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"``: how a foreign exception is quoted in a one-line error."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
