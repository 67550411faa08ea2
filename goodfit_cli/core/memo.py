"""What one command computes once and its later steps reuse.

A store that lives for the span of the outermost `command_memo` block (trainer/measured.py
`measured_once` opens it: one per command; `goodfit search` one around all its trials), keyed
by the caller's exact identity of what was computed (a base's measurement, a WiSE-FT point's,
the old task's squared gradients at a base: arms/terms.py). Outside a block nothing is kept and
every caller computes afresh.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_STORE: ContextVar[dict[str, Any] | None] = ContextVar("goodfit_command_memo", default=None)


@contextmanager
def command_memo() -> Iterator[bool]:
    """Keep what is remembered within the block; a nested block shares the outer one's store.
    Yields whether this block is the outermost (it drops the store when it ends)."""
    if _STORE.get() is not None:
        yield False
        return
    token = _STORE.set({})
    try:
        yield True
    finally:
        _STORE.reset(token)


def store() -> dict[str, Any] | None:
    """The open block's store, or None outside one."""
    return _STORE.get()


def remember(key: str | None, value: Any) -> None:
    """Keep `value` under `key` for the rest of the block (the first value kept stays)."""
    kept = _STORE.get()
    if key is not None and kept is not None:
        kept.setdefault(key, value)


def recall(key: str | None) -> Any:
    """What the block kept under `key`, or None: nothing kept (or no block open)."""
    kept = _STORE.get()
    return None if key is None or kept is None else kept.get(key)
