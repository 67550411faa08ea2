"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, key, tensor, argument): one clear line, exit code 2.

    The message must name what is wrong (the file, the key, the tensor) and, where it helps,
    what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        # one line, whatever a file or key name smuggles in (a fuzzer found tensor names with \n),
        # and printable: a lone surrogate (a non-UTF-8 file name, a YAML "\ud83d") is escaped
        message = str(message).replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(message.encode("utf-8", "backslashreplace").decode("utf-8"))


class GateFailure(Exception):
    """A candidate violated a regression gate (exit code 3)."""

    exit_code = 3


class Diverged(Exception):
    """The training loss became NaN or Inf (exit code 4); the last good state is kept."""

    exit_code = 4

    def __init__(self, batch: int, where: str = "", what: str = "loss is NaN or Inf") -> None:
        super().__init__(f"{what} at batch {batch}{where}")
        self.batch = batch
