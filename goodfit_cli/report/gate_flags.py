"""A gate from the command line's flags: --max-old-drop, --max-nfr and the METRIC=V bounds
(--min-old, --max-old, --min-new, --max-new, --max-old-drop-rel); the limits a gate file
would hold (report/gate.py), checked as a gate file's are."""

from __future__ import annotations

import math

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest
from goodfit_cli.objectives import declared, direction, is_rate
from goodfit_cli.objectives import metric as declaration
from goodfit_cli.report.bounds import impossible
from goodfit_cli.report.limits import FLIP_METRICS, Gate, Limit


BOUND_FLAGS = {"min_old": ("old", "min"), "max_old": ("old", "max"), "min_new": ("new", "min"),
               "max_new": ("new", "max"), "max_old_drop_rel": ("old", "max_drop_rel")}


def parse_bound(flag: str, item: str) -> Limit:
    """'accuracy=0.90' given to --min-old (flag "min_old") -> Limit(old, accuracy, min, 0.9)."""
    task, bound = BOUND_FLAGS[flag]
    name = "--" + flag.replace("_", "-")
    metric, sep, value = str(item).partition("=")
    metric = metric.strip()
    if not sep or not metric:
        raise UserError(f"{name} {item!r}: expected METRIC=VALUE, e.g. {name} accuracy=0.9")
    if not (metric in FLIP_METRICS or declaration(metric) is not None):
        known = sorted({*declared(), *FLIP_METRICS})
        raise UserError(f"{name} {item!r}: unknown metric {metric!r}{suggest(metric, known)}")
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise UserError(f"{name} {item!r}: the bound must be a finite number, got {value!r}")
    if bound == "max_drop_rel" and v < 0:
        raise UserError(f"{name} {item!r}: a drop relative to the base is a share >= 0 (0.1 = "
                        "10 % of the base's value)")
    if impossible(metric, bound, v):
        raise UserError(f"{name} {item!r}: {impossible(metric, bound, v)}")
    return Limit(task, metric, bound, v)


def gate_from_flags(max_old_drop: float | None, max_nfr: float | None, primary_old: str,
                    bounds: dict[str, list[str] | None] | None = None) -> Gate:
    """A gate from --max-old-drop (absolute, in old-task primary-metric units), --max-nfr and the
    bounds {"min_old": ["accuracy=0.9", ...], "max_old": [...], "min_new", "max_new"} (absolute)
    and "max_old_drop_rel" (["mse=0.1"]: a drop of at most 10 % of the base's value)."""
    limits = []
    if max_old_drop is not None:
        if not math.isfinite(max_old_drop) or max_old_drop < 0:
            eg = "0.01 = 1 pt" if is_rate(primary_old) else "0.01"  # points: of a rate only
            raise UserError(f"--max-old-drop must be a number >= 0 (absolute drop in old-task "
                            f"{primary_old}, e.g. {eg}), got {max_old_drop}")
        direction(primary_old)                       # UserError when its direction is unknown
        if impossible(primary_old, "max_drop", max_old_drop):
            raise UserError(f"--max-old-drop {max_old_drop:g}: old-task "
                            f"{impossible(primary_old, 'max_drop', max_old_drop)}")
        limits.append(Limit("old", primary_old, "max_drop", float(max_old_drop)))
    if max_nfr is not None:
        if not math.isfinite(max_nfr) or not 0 <= max_nfr <= 1:
            raise UserError(f"--max-nfr must be a share in [0, 1] (0.05 = 5 % of old-task "
                            f"samples flipped to wrong), got {max_nfr}")
        limits.append(Limit("old", "nfr", "max", float(max_nfr)))
    for flag, items in (bounds or {}).items():
        limits += [parse_bound(flag, item) for item in items or []]
    return Gate(tuple(limits), source="flags")
