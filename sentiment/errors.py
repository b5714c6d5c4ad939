"""The one exception type that reaches the user as a single line and exit status 2."""
from __future__ import annotations


class SentimentError(Exception):
    """Bad input or a bad model: the message says what was wrong and where.

    Command-line entry points catch it, print ``error: <message>`` on stderr and exit
    with status 2, so users never see a traceback for a mistake of theirs.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the command told the user what it leaves behind (the best model so far,
    how to resume): the entry points end with status 130 and add nothing."""


def ray_join_failure(address: str | None, exc: BaseException) -> SentimentError:
    """One line for a ``ray.init`` that failed, with the reason Ray's "Failed to connect" wraps."""
    why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        why += f": {str(cause).strip().splitlines()[0]}"
    return SentimentError(f"--address {address}: cannot join a Ray cluster ({why})")
