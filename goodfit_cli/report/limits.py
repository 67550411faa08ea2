"""What a gate is made of: a limit (task, metric, bound, threshold) and a gate (its limits and
where they came from), and how a value reads against a bound (`within`, with its tolerance).
Reading them from YAML or flags, wording them and judging an arm: report/gate.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

from goodfit_cli.core.metrics import FLIPS
from goodfit_cli.report.bounds import odd

TASKS = ("old", "new")
DELTA_BOUNDS = ("max_drop", "max_drop_rel", "min_gain")
VALUE_BOUNDS = ("max", "min")
LIMIT_KEYS = ("task", "metric", *DELTA_BOUNDS, *VALUE_BOUNDS, "require_significant")
FLIP_METRICS = tuple(m.name for m in FLIPS)  # the report's own (core.metrics.FLIPS)


@dataclass(frozen=True)
class Limit:
    task: str                       # "old" or "new"
    metric: str                     # a report metric, or nfr / pfr
    bound: str                      # one of DELTA_BOUNDS + VALUE_BOUNDS
    threshold: float
    require_significant: bool = False

    @property
    def name(self) -> str:
        sig = " (significant)" if self.require_significant else ""
        return f"{self.task} {self.metric} {self.bound} {self.threshold:g}{sig}"


@dataclass(frozen=True)
class Gate:
    limits: tuple[Limit, ...]
    source: str = "flags"           # the gate file, or "flags"

    def notes(self) -> list[str]:
        """A line per odd but possible bound (report/bounds.py: a floor on an error)."""
        return [n for l in self.limits
                if (n := odd(l.task, l.metric, l.bound, l.threshold, self.source))]


def within(value: float, bound: float, side: str) -> bool:
    """value <= bound (side "max") or value >= bound ("min"), up to 1e-12 x max(1, |bound|);
    False for a non-finite value."""
    if not math.isfinite(value):
        return False
    tol = 1e-12 * max(1.0, abs(bound))
    return value <= bound + tol if side == "max" else value >= bound - tol
