"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, key, tensor, argument): one clear line, exit code 2.

    The message must name what is wrong (the file, the key, the tensor) and, where it helps,
    what to do about it.
    """

    exit_code = 2


class GateFailure(Exception):
    """A candidate violated a regression gate (exit code 3)."""

    exit_code = 3
