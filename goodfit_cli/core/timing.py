"""Where a command's time goes: named phases, and the share that is training.

A command is more than its training loop: its start-up (the imports and the recipe, from the
CLI's entry point), loading the data and the base, evaluating the base,
the periodic evaluations, the WiSE curve, the bootstrap and the report. `Phases` adds up wall
time per phase (perf_counter; results that reach the host, as evaluations do, have synchronised
the device) so a run can say `command / training` about itself. A phase timed inside another
(the bootstrap inside the report: `counted`, for code that does not hold the Phases) is taken
out of the enclosing one, so the phases never count a second twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TRAINING = "training"


START_UP = "start_up"
_COMMAND_START: list[float] = []  # when the CLI's entry point began (command_started)


def command_started() -> None:
    """Called by the CLI's entry point before anything is imported for the command: the
    process's first Phases counts the time since as its "start_up" phase (the heavy imports,
    torch and timm, the recipe read and checked), so its total is the command's."""
    _COMMAND_START[:] = [time.perf_counter()]


class Phases:
    def __init__(self) -> None:
        self.start = time.perf_counter()  # this command's own phases begin ("load" from here)
        self.seconds: dict[str, float] = {}
        self.arms: dict[str, dict[str, float]] = {}  # each arm's share of the phases
        self._inner: list[float] = []  # per open phase: the seconds of the phases inside it
        self.began = self.start  # what the total counts from
        if _COMMAND_START:  # the process's first command (a search's trials have none)
            self.began = _COMMAND_START.pop()
            self.seconds[START_UP] = self.start - self.began

    def add(self, name: str, seconds: float, arm: str | None = None) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)
        if arm is not None:
            self.attribute(arm, name, seconds)

    def attribute(self, arm: str, name: str, seconds: float) -> None:
        """Count `seconds` of phase `name` (counted there already) as arm `arm`'s too."""
        own = self.arms.setdefault(arm, {})
        own[name] = own.get(name, 0.0) + max(0.0, seconds)

    def timed(self, arm: str, name: str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args), its time attributed to `arm` as phase `name` (inside that phase)."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.attribute(arm, name, time.perf_counter() - t0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            spent = time.perf_counter() - t0
            self.add(name, spent - self._inner.pop())
            if self._inner:
                self._inner[-1] += spent

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Within the block, `counted(name)` blocks are phases of this command."""
        token = _COUNTING.set(self)
        try:
            yield
        finally:
            _COUNTING.reset(token)

    def record(self) -> dict[str, Any]:
        """{"phases_s": {phase: s}, "total_s": s since the start, "command_over_training"},
        and "arms_s": {arm: {phase: s}} when arms were timed."""
        total = time.perf_counter() - self.began
        training = self.seconds.get(TRAINING, 0.0)
        arms = {a: {k: round(v, 3) for k, v in d.items()} for a, d in self.arms.items()}
        return {"phases_s": {k: round(v, 3) for k, v in self.seconds.items()},
                **({"arms_s": arms} if arms else {}),
                "other_s": round(max(0.0, total - sum(self.seconds.values())), 3),
                "total_s": round(total, 3),
                "command_over_training": round(total / training, 3) if training > 0 else None}

    def line(self, rec: dict[str, Any] | None = None) -> str:
        """The terminal's time line: of `rec`, the record the command wrote to its timings.json
        (this command's own, before a resume's merge), so the two say the same numbers; a fresh
        record() reads the clock again, later (before 2026-12-06 the line did: demo --quick
        printed 1.86x the training beside a timings.json of 1.831)."""
        rec = self.record() if rec is None else rec
        parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in rec["phases_s"].items())
        ratio = rec["command_over_training"]
        return (f"time: {parts}; total {rec['total_s']:.1f} s"
                + (f" ({ratio:.2f}x the training)" if ratio else ""))


def earlier(path: Path) -> dict | None:
    """What a resumed run's earlier commands recorded in its timings.json (None when there is
    none, or it cannot be read or holds other than numbers where `merged` adds them: the time
    is then this command's alone, never a crash after the run's report is written)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("phases_s"), dict):
        return None
    arms = record.get("arms_s", {})
    numbers = [*record["phases_s"].values(), record.get("total_s", 0.0),
               record.get("other_s", 0.0),
               *(v for d in (arms.values() if isinstance(arms, dict) else [None])
                 for v in (d.values() if isinstance(d, dict) else [None]))]
    if not all(type(v) in (int, float) for v in numbers) \
            or type(record.get("commands", 1)) is not int:  # damaged: as if there were none
        return None
    return record


def merged(before: dict | None, now: dict) -> dict:
    """A resumed run's time: what its earlier commands recorded (`before`, their
    timings.json; None when there is none) plus this command's `now`, phase by phase, with the
    number of commands; `now` alone when there was nothing before. How each earlier command
    that was cut short ended (its record's "ended") is kept in "cut_short" ({command number:
    how it ended}), so the record of a run finished by a resume still says it was."""
    if not before or not isinstance(before.get("phases_s"), dict):
        return now
    count = int(before.get("commands", 1))
    cut = dict(before["cut_short"]) if isinstance(before.get("cut_short"), dict) else {}
    if isinstance(before.get("ended"), str):
        cut[str(count)] = before["ended"]
    phases = dict(before["phases_s"])
    for k, v in now["phases_s"].items():
        phases[k] = round(phases.get(k, 0.0) + v, 3)
    kept = before.get("arms_s") if isinstance(before.get("arms_s"), dict) else {}
    arms = {a: dict(d) for a, d in kept.items() if isinstance(d, dict)}
    for a, d in (now.get("arms_s") or {}).items():
        own = arms.setdefault(a, {})
        for k, v in d.items():
            own[k] = round(own.get(k, 0.0) + v, 3)
    total = round(before.get("total_s", 0.0) + now["total_s"], 3)
    training = phases.get(TRAINING, 0.0)
    return {"phases_s": phases, **({"arms_s": arms} if arms else {}),
            "other_s": round(before.get("other_s", 0.0) + now["other_s"], 3),
            "total_s": total,
            "command_over_training": round(total / training, 3) if training > 0 else None,
            "commands": count + 1, **({"cut_short": cut} if cut else {})}


_COUNTING: ContextVar[Phases | None] = ContextVar("goodfit_phases", default=None)


@contextmanager
def counted(name: str) -> Iterator[None]:
    """The block as phase `name` of the command whose Phases are counting (else untimed)."""
    phases = _COUNTING.get()
    if phases is None:
        yield
        return
    with phases.phase(name):
        yield
