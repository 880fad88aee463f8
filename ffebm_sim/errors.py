"""The one exception users see for bad input.

Anything a user supplies (a spec file, a CLI option, arguments of a public
constructor) that is wrong raises :class:`SpecError` with a one-line message
naming the field, what was found and what is allowed. The CLI prints that
line and exits with code 2; it never shows a traceback for it.
"""


class SpecError(ValueError):
    """Bad user input: the message is one line, ``<field>: <problem>; <what is allowed>``."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
