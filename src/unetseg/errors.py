"""User-facing errors.

A :class:`UserError` is a mistake in the user's input (a missing folder, an unreadable image,
a mask value outside the class table, ...). The command line prints its message as one line and
exits with status 2; library callers can catch it like any other exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, with a message that names the file and the fix."""

    exit_code = 2
