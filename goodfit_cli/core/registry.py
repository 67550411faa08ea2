"""Small named registries: recipes name registered components, they never import code."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from goodfit_cli.core.errors import UserError

T = TypeVar("T", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    fn: T
    description: str


class Registry(Generic[T]):
    """A name → builder table with one-line descriptions and "did you mean" errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def deco(fn: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, fn, description)
            return fn

        return deco

    def get(self, name: str, where: str = "") -> T:
        entry = self._entries.get(name)
        if entry is None:
            raise UserError(f"{where}unknown {self.kind} {name!r}{suggest(name, self.names())}")
        return entry.fn

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))


def suggest(name: str, choices: list[str]) -> str:
    """'; did you mean 'x'?' when a close match exists, else the list of choices."""
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (choose from: {', '.join(choices)})" if choices else ""
