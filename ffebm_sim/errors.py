"""The one exception users see for bad input.

Anything a user supplies (a spec file, a CLI option, arguments of a public
constructor) that is wrong raises :class:`SpecError` with a one-line message
naming the field, what was found and what is allowed. The CLI prints that
line and exits with code 2; it never shows a traceback for it.

Values in messages are written as plain Python literals (:func:`plain`):
``-0.0004``, never ``np.float64(-0.0004)``. As a safety net the constructor
rewrites any numpy scalar repr that still reaches a message.
"""

from __future__ import annotations

import re

_NUMPY_SCALAR = re.compile(r"np\.(?:float|int|uint|bool|complex|str)_?\d*\(([^()]*)\)")


def plain(value) -> str:
    """``repr`` of a value as the user would write it (numpy scalars become Python numbers)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        try:
            value = item()
        except (TypeError, ValueError):
            pass
    return repr(value)


class SpecError(ValueError):
    """Bad user input: the message is one line, ``<field>: <problem>; <what is allowed>``."""

    def __init__(self, message: str):
        super().__init__(_NUMPY_SCALAR.sub(r"\1", " ".join(str(message).split())))
