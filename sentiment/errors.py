"""The one exception type that reaches the user as a single line and exit status 2."""


class SentimentError(Exception):
    """Bad input or a bad model: the message says what was wrong and where.

    Command-line entry points catch it, print ``error: <message>`` on stderr and exit
    with status 2, so users never see a traceback for a mistake of theirs.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the command told the user what it leaves behind (the best model so far,
    how to resume): the entry points end with status 130 and add nothing."""
