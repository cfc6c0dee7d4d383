"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (a path, a flag, a file). The CLI prints the
    message as one line, exits with code 2 and shows no traceback.

    The message should say what went wrong, where, and how to fix it.
    """

    exit_code = 2


class PluginError(UserError):
    """A plugin set-up problem the user must resolve (a name claimed twice, an unknown
    name)."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its
    type's name when it has none: how a library's failure is quoted in one error line."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
