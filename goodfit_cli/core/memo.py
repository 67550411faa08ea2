"""What one command computes once and its later steps reuse.

A store that lives for the span of the outermost `command_memo` block (trainer/measured.py
`measured_once` opens it: one per command; `goodfit search` one around all its trials), keyed
by the caller's exact identity of what was computed (a base's measurement, a WiSE-FT point's,
the old task's squared gradients at a base: arms/terms.py). Outside a block nothing is kept and
every caller computes afresh. `named_tensors` and `hash_tensors` are how a key takes in
tensors' contents (a session's data, a model's weights and the rows it is fed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

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


def named_tensors(x: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """`x`'s tensors with their names: a tensor, or a dict of them (each, in key order, named
    '<name>.<key>'); TypeError where something else is held."""
    if isinstance(x, dict):
        return [pair for k in sorted(x) for pair in named_tensors(x[k], f"{name}.{k}")]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} is not held as tensors")
    return [(name, x)]


def hash_tensors(h: Any, pairs: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed each (name, tensor) into the hash `h`: its name, shape, dtype and bytes."""
    for name, t in pairs:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
