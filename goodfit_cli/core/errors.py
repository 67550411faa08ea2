"""What can end a command, each with its exit code: a user's mistake (2), a violated gate (3),
divergence (4), an interruption (128 + signal). The CLI maps these to exit codes; nothing here
imports torch, so `goodfit --help` stays fast."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from goodfit_cli.core.text import printable


class UserError(Exception):
    """A mistake in the user's input (file, key, tensor, argument): one clear line, exit code 2.

    The message must name what is wrong (the file, the key, the tensor) and, where it helps,
    what to do about it.
    """

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        # one line, whatever a file or key name smuggles in (a fuzzer found tensor names with \n),
        # and printable: ESC, bidi controls and lone surrogates are escaped (core.text)
        super().__init__(printable(message))


class GateFailure(Exception):
    """A candidate violated a regression gate (exit code 3)."""

    exit_code = 3

    def __init__(self, message: str = "") -> None:
        super().__init__(printable(message))  # names candidates (folder names): escaped


class Diverged(Exception):
    """The training loss became NaN or Inf (exit code 4); the last good state is kept."""

    exit_code = 4

    def __init__(self, batch: int, where: str = "", what: str = "loss is NaN or Inf") -> None:
        super().__init__(printable(f"{what} at batch {batch}{where}"))
        self.batch = batch


class Interrupted(Exception):
    """A run stopped by SIGINT/SIGTERM after saving a resumable state (exit 128 + signal)."""

    def __init__(self, signum: int, run_dir: Path, resume: str = "the same command again") -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum, self.run_dir = signum, run_dir
        self.resume = resume  # how to continue; a pretrain resumes by itself from its --out

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM where no training loop stops at a batch for it (start-up, the base's
    evaluation, WiSE-FT, the report): raised where the process is, as Python raises
    KeyboardInterrupt for SIGINT, so writes in flight are undone and the command can say so and
    exit 128 + `signum` (before: SIGTERM killed the process without a word)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Signalled (a training loop's own handlers,
    core.distributed.stop_on_signals, take over while it runs); the old handlers come back
    after. Outside the main thread (no handlers can be set there) it changes nothing."""

    def handler(signum, _frame):
        raise Signalled(signum)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, h in old.items():
            try:
                signal.signal(s, h)
            except (ValueError, TypeError):
                pass


def loc(where: str, key: str) -> str:
    """Join an error location and a key: ('f.yaml: model', 'args') -> 'f.yaml: model.args'.

    The one place that spells locations: a `where` ending in ':' (a file) is followed by a
    space, anything else (a section) by a dot.
    """
    w = where.rstrip()
    if not w:
        return key
    return f"{w} {key}" if w.endswith(":") else f"{w}.{key}"
