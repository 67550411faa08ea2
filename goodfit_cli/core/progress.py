"""Progress of long work below the CLI (reading an image folder into memory), for whoever shows it.

The layer doing the work wraps it in `work(what, total)` and calls the function it yields with
the number of items done so far; the CLI installs a `Listener` for the span of a command
(`listening`; cli/console.py draws it: a bar on a terminal, a line every --progress-every
seconds without one). With no listener (a library call, most tests) `work` yields a no-op.
The listener is called from the thread that entered `work` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


# items between two reports of work done one item at a time (reading images): a report is a
# context-variable read and a clock reading, negligible against a read, but not per item
ITEMS_PER_REPORT = 16


class Listener(Protocol):
    def start(self, what: str, total: int) -> None: ...  # `what`: e.g. "old.test images"
    def advance(self, done: int) -> None: ...  # items done so far (never decreasing)
    def end(self, done: int) -> None: ...  # finished, or raised: `done` items were done


_LISTENER: ContextVar[Listener | None] = ContextVar("goodfit_progress", default=None)


@contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """`listener` hears the `work` started in the block (None: nobody does)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def _ignore(done: int) -> None:
    return None


@contextmanager
def work(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """Report `total` items of `what` as they are done: yields `advance(done)`."""
    listener = _LISTENER.get()
    if listener is None:
        yield _ignore
        return
    last = [0]

    def advance(done: int) -> None:
        last[0] = done
        listener.advance(done)

    listener.start(what, total)
    try:
        yield advance
    finally:
        listener.end(last[0])
