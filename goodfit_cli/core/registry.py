"""Small named registries: recipes name registered components, they never import code.

A registry may also take builders from installed packages: Python entry points in its group
(`goodfit.models`, `goodfit.datasets`, `goodfit.objectives`, `goodfit.metrics`, `goodfit.arms`), each `name = "pkg.module:builder"`
in the plugin's pyproject (`[project.entry-points."goodfit.models"]`). A recipe still names a
component; the plugin's module is imported only when that name is asked for (or the registry is
listed), and a plugin that fails to import is one UserError naming it. Built-in names win over
plugins of the same name.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from goodfit_cli.core.errors import UserError

T = TypeVar("T", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    fn: T
    description: str
    origin: str = "built-in"  # or the plugin's distribution, "plugin my-pkg 1.0"


class Registry(Generic[T]):
    """A name → builder table with one-line descriptions and "did you mean" errors."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind, self.group = kind, group
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
        if entry is None and name in self._plugins():
            entry = self._load(self._plugins()[name])
        if entry is None:
            raise UserError(f"{where}unknown {self.kind} {name!r}{suggest(name, self.names())}")
        return entry.fn

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._plugins()})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._plugins()

    def __iter__(self) -> Iterator[Entry[T]]:
        """Every entry, plugins loaded (a plugin that fails to import is a UserError)."""
        for ep in self._plugins().values():
            self._load(ep)
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def _plugins(self) -> dict[str, metadata.EntryPoint]:
        """The entry points of this registry's group not shadowed by a built-in name."""
        if self.group is None:
            return {}
        eps = _entry_points(self.group)
        return {ep.name: ep for ep in eps if ep.name not in self._entries or
                self._entries[ep.name].origin != "built-in"}

    def _load(self, ep: metadata.EntryPoint) -> Entry[T]:
        if ep.name in self._entries:
            return self._entries[ep.name]
        dist = f"plugin {ep.dist.name} {ep.dist.version}" if ep.dist is not None else "plugin"
        try:
            fn = ep.load()
        except Exception as e:  # a plugin is foreign code: any failure is the plugin's
            raise UserError(f"{self.group} entry point {ep.name!r} = {ep.value!r} ({dist}) "
                            f"failed to load: {type(e).__name__}: {e}") from None
        if not callable(fn):
            raise UserError(f"{self.group} entry point {ep.name!r} = {ep.value!r} ({dist}) is "
                            f"not callable; it must name a builder")
        doc = (getattr(fn, "description", None) or getattr(fn, "__doc__", None) or "")
        doc = doc.strip().splitlines() if isinstance(doc, str) else []
        self._entries[ep.name] = Entry(ep.name, fn, doc[0] if doc else "(no description)", dist)
        return self._entries[ep.name]


_SCANNED: dict[tuple[str, tuple[str, ...]], tuple[metadata.EntryPoint, ...]] = {}


def _entry_points(group: str) -> tuple[metadata.EntryPoint, ...]:
    """The group's entry points, scanned once per search path: a scan reads every installed
    distribution's metadata (tens of ms), and the report asks for a metric's declaration often."""
    key = (group, tuple(sys.path))
    if key not in _SCANNED:
        _SCANNED[key] = tuple(metadata.entry_points(group=group))
    return _SCANNED[key]


def suggest(name: str, choices: list[str]) -> str:
    """'; did you mean 'x'?' when a close match exists (the same name in another case first:
    'AdamW' is 'adamw', not 'adam'), else the list of choices."""
    same = [c for c in choices if c.lower() == str(name).lower()]
    close = same or difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (choose from: {', '.join(choices)})" if choices else ""


def plugin_names(group: str) -> list[str]:
    """Names installed packages offer in an entry-point group, without importing them."""
    return sorted(ep.name for ep in _entry_points(group))


def installed(module: str) -> bool:
    """Whether the package `module` is installed, found without importing it (its distribution
    of the same name); one whose import is blocked (None in sys.modules) is not."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        metadata.distribution(module)
    except metadata.PackageNotFoundError:
        return False
    return True
