"""Regression gates: limits on what an arm may break, from YAML or CLI flags; JUnit XML out.

A gate file:

    limits:
      - {task: old, metric: accuracy, max_drop: 0.01}      # absolute drop, in the bad direction
      - {task: old, metric: accuracy, max_drop_rel: 0.02}  # drop / |base value|
      - {task: old, metric: nfr, max: 0.05}                # ceiling on a value (min: a floor)
      - {task: new, metric: accuracy, min_gain: 0.0,       # gain in the good direction
         require_significant: true}

Drops and gains are direction-aware (for mse a rise is a drop). With require_significant, a
failing check counts as a violation only when its 95 % CI lies wholly beyond the limit: a
drop's (max_drop, max_drop_rel) lower end above the limit, a gain's (min_gain) upper end below
the gain required, a value's (max/min; nfr and pfr: other metrics' values have no CI) whole
interval past the bound (until 2026-12-06 a delta check counted when its CI excluded zero).
A failing check with no CI to test stays a violation, and its message says why there is none.

Flags give the same limits (report/gate_flags.py): --max-old-drop D (the old primary metric's
max_drop), --max-nfr R, absolute floors and ceilings --min-old METRIC=V, --max-old METRIC=V,
--min-new METRIC=V, --max-new METRIC=V and relative drops --max-old-drop-rel METRIC=V
(repeatable). Boundaries: a value exactly at a bound passes; every
comparison allows a tolerance of 1e-12 x max(1, |bound|) (`within`), so 0.9 typed on the
command line passes an accuracy computed as 0.9000000000000001 or 0.8999999999999999. A
non-finite value (NaN, inf; stored as null in a report) never passes, and a limit on a metric
the run does not measure is a UserError (exit 2), never a silent pass or fail.
"""

from __future__ import annotations

import math
import os
import reprlib
from pathlib import Path
from typing import Callable

from goodfit_cli.core.units import RATE, amount_text, ci_text, value_text
from goodfit_cli.objectives import declared, direction, unit
from goodfit_cli.objectives import metric as declaration
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest
from goodfit_cli.recipe.yamlcheck import parse_yaml
from goodfit_cli.report.bounds import impossible
from goodfit_cli.report.limits import (  # noqa: F401  (what importers of gate read)
    DELTA_BOUNDS,
    FLIP_METRICS,
    LIMIT_KEYS,
    TASKS,
    VALUE_BOUNDS,
    Gate,
    Limit,
    within,
)


# ---------------------------------------------------------------- loading
def load_gate(path: str | os.PathLike) -> Gate:
    """Read and validate a gate YAML file; every mistake is one UserError naming file and key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the gate file ({getattr(e, 'strerror', None) or e})")
    data, marks = parse_yaml(text, str(path))  # the recipe loader's limits: no alias bombs

    def place(i: int) -> str:
        line, col = marks.get(("limits", i), (None, None))
        return f"{path}:{line}:{col}: limits[{i}]" if line else f"{path}: limits[{i}]"

    return parse_gate(data, str(path), f"{path}: ", place)


def parse_gate(data, source: str, where: str, place=None) -> Gate:
    """A gate from its mapping {"limits": [...]} (a gate file's content, or a recipe's `gate`
    section); `where` starts every error's key ("gate.yaml: " or "r.yaml: gate."), and
    `place(i)`, when given, names limit i ('r.yaml:40:7: gate.limits[0]', with its line)."""
    head = where.rstrip(". :")
    if not isinstance(data, dict):
        raise UserError(f"{head}: expected a mapping with a 'limits' list")
    for key in data:
        if key != "limits":
            raise UserError(f"{head}: unknown key {_short(key)}{suggest(str(key), ['limits'])}")
    entries = data.get("limits")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{head}: 'limits' must be a non-empty list of limits")
    limits = []
    for i, entry in enumerate(entries):
        limits += _parse_limit(entry, place(i) if place else f"{where}limits[{i}]")
    return Gate(tuple(limits), source=source)


def gate_record(gate: Gate | None) -> dict | None:
    """A gate as a run records it (run.json "gate"): its limits as a gate file writes them and
    where they came from; None for no gate. `recorded_gate` reads it back."""
    if gate is None or not gate.limits:
        return None
    return {"limits": [{"task": l.task, "metric": l.metric, l.bound: l.threshold,
                        **({"require_significant": True} if l.require_significant else {})}
                       for l in gate.limits], "source": gate.source}


def recorded_gate(record, where: str) -> Gate | None:
    """The gate `gate_record` wrote (None for none); `where` names the file and key for an
    error (a record changed by hand)."""
    if record is None:
        return None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a mapping with 'limits' and 'source'")
    source = record.get("source", "flags")
    gate = parse_gate({"limits": record.get("limits")}, str(source), f"{where}.")
    return Gate(gate.limits, source=str(source))


def _short(value) -> str:
    """A value as the user wrote it, cut short: an alias can stand for gigabytes of repr."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 2, 40, 40
    text = short.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_limit(entry, where: str) -> list[Limit]:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping like {{task: old, metric: accuracy, "
                        f"max_drop: 0.01}}, got {_short(entry)}")
    for key in entry:
        if key not in LIMIT_KEYS:
            raise UserError(f"{where}: unknown key {_short(key)}{suggest(str(key), list(LIMIT_KEYS))}")
    task, metric = entry.get("task"), entry.get("metric")
    if task not in TASKS:
        raise UserError(f"{where}.task: must be 'old' or 'new', got {_short(task)}")
    if not isinstance(metric, str) or declaration(metric) is None:
        raise UserError(f"{where}.metric: unknown metric {_short(metric)}"
                        f"{suggest(str(metric), declared())}")
    sig = entry.get("require_significant", False)
    if not isinstance(sig, bool):
        raise UserError(f"{where}.require_significant: must be true or false, got {_short(sig)}")
    bounds = [b for b in (*DELTA_BOUNDS, *VALUE_BOUNDS) if b in entry]
    if not bounds:
        raise UserError(f"{where}: give a bound: one of {', '.join(DELTA_BOUNDS + VALUE_BOUNDS)}")
    limits = []
    for b in bounds:
        v = entry[b]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}.{b}: must be a number, got {_short(v)}")
        if b in ("max_drop", "max_drop_rel") and v < 0:
            raise UserError(f"{where}.{b}: must be >= 0, got {_short(v)}")
        if metric in FLIP_METRICS and b not in VALUE_BOUNDS:
            raise UserError(f"{where}.{b}: flip rate {_short(metric)} takes only 'max' or 'min' bounds")
        if impossible(metric, b, v):
            raise UserError(f"{where}.{b}: {impossible(metric, b, v)}")
        limits.append(Limit(task, metric, b, float(v), sig))
    return limits


def describe(gate: Gate | None, units: dict | None = None) -> str:
    """The gate in words for the top of a report: its limits and where they came from;
    `units` as `worded`'s."""
    if gate is None or not gate.limits:
        return "no gate"
    src = "command-line flags" if gate.source == "flags" else gate.source
    return "; ".join(worded(l, units) for l in gate.limits) + f" (from {src})"


def _unit(units: dict | None, task: str, metric: str) -> str:
    """The unit of `metric` on `task` in `units` ({task: {metric: unit}}: the task's objective's
    declaration, `units_of`), else as every declaration agrees (`objectives.unit`)."""
    return ((units or {}).get(task) or {}).get(metric, unit(metric))


def worded(l: Limit, units: dict | None = None) -> str:
    """'old ade@8s max 7.9 m', 'old accuracy max_drop 0.01 (1.00 pts)', 'old accuracy
    max_drop_rel 0.1 (10.00 % of the base)': a limit with its threshold in the report's units
    (`units`: {task: {metric: unit}}, see `_unit`)."""
    u, sig = _unit(units, l.task, l.metric), " (significant)" if l.require_significant else ""
    if l.bound == "max_drop_rel":
        return f"{l.task} {l.metric} {l.bound} {l.threshold:g} ({l.threshold * 100:.2f} % of the " \
               f"base){sig}"
    if not u:
        return l.name
    said = (amount_text(l.threshold, u) if l.bound in DELTA_BOUNDS else value_text(l.threshold, u))
    said = f"({'-' * (l.threshold < 0 and l.bound in DELTA_BOUNDS)}{said})" if u == RATE else u
    return f"{l.task} {l.metric} {l.bound} {l.threshold:g} {said}{sig}"


def check_metrics(gate: Gate, have: dict[str, set[str]], kinds: dict[str, str],
                  what: str) -> None:
    """A UserError (exit 2) when a limit names a metric the run does not measure: `have` =
    {"old": {metric, ...}, "new": {...}}, `kinds` each task's kind; `what` names the run."""
    src = "gate flags" if gate.source == "flags" else gate.source
    for limit in gate.limits:
        if limit.metric in FLIP_METRICS:
            if limit.task != "old":  # whatever the task's kind: flips are the old task's
                hint = (f"use --{limit.bound}-old {limit.metric}={limit.threshold:g}"
                        if gate.source == "flags" else "give task: old")
                if kinds.get("old") != "classification":  # no flips there either
                    hint = (f"nor on the old task here: {what}'s old task is "
                            f"{kinds.get('old') or 'not classification'}")
                raise UserError(f"{src}: {limit.name}: flip rates are measured on the old task "
                                f"only (samples the update broke or fixed there), so a limit on "
                                f"the {limit.task} task is not allowed; {hint}")
            if kinds.get("old") == "classification":
                continue
            raise UserError(f"{src}: {limit.name}: flip rates need a classification old task; "
                            f"{what}'s old task is {kinds.get('old') or 'not classification'}")
        if limit.metric not in have.get(limit.task, set()):
            known = ", ".join(sorted(have.get(limit.task, set()))) or "none"
            raise UserError(f"{src}: {limit.name}: {what} does not measure "
                            f"{limit.task} {limit.metric} (it measures: {known})")


# ---------------------------------------------------------------- evaluation
def _shown(u: str, a: float, b: float, amounts: bool = False) -> tuple[str, str]:
    """a and b as the report shows them (`core.units`: 4 significant digits, a rate in % to 2
    decimals, the unit after), with more digits while they would read alike but differ beyond
    the gate's tolerance (a value just over its limit must not read "7.945 m (limit 7.945 m)").
    `amounts`: sizes of changes (pts for a rate)."""
    differ = not within(a, b, "max") or not within(a, b, "min")
    for extra in range(14):
        out = tuple(amount_text(v, u, 4 + extra) if amounts else value_text(v, u, 4 + extra)
                    for v in (a, b))
        if out[0] != out[1] or not differ:
            break
    return out


def _ci_text(u: str, ci) -> str:
    return f"95 % CI {ci_text(ci, u)}{' pts' if u == RATE else f' {u}' if u else ''}"


def _check(limit: Limit, arm: dict, units: dict | None = None) -> dict:
    task, metric, thr = limit.task, limit.metric, limit.threshold
    label = f"{task} {metric}"
    u = _unit(units, task, metric)

    def result(value, passed, message, ci=None, significant=None, why="no predictions",
               ci_said: str | None = None) -> dict:
        if not passed and limit.require_significant:
            if ci is None:
                message += f"; no CI to test significance ({why}), counted as a violation"
            elif not significant:
                passed, message = True, message + (f"; not significant "
                                                   f"({ci_said or _ci_text(u, ci)})")
        return {"limit": limit.name, "value": value, "threshold": thr, "passed": passed,
                "message": message}

    if limit.bound in VALUE_BOUNDS:
        if metric in FLIP_METRICS:
            flips = arm.get("flips", {}).get(task)
            if flips is None:
                return result(None, False, f"{label}: no flip rates for arm {arm['name']!r} (they "
                              f"need classification predictions of base and arm)")
            value, ci = flips[metric], flips.get(f"{metric}_ci")
        else:
            measured = arm.get("metrics", {}).get(task, {})
            value, ci = measured.get(metric), None
            if metric in measured and not _finite(value):
                return result(None, False, f"{label} is not a finite number for arm "
                              f"{arm['name']!r}: it never passes a gate")
            if value is None:
                return result(None, False, f"{label}: not in the report for arm {arm['name']!r}")
        if not _finite(value):
            return result(None, False, f"{label} is not a finite number for arm "
                          f"{arm['name']!r}: it never passes a gate")
        why = ("a max or min bound has a CI only on nfr and pfr; use max_drop or min_gain"
               if metric not in FLIP_METRICS else "no predictions")
        shown, thr_shown = _shown(u, value, thr)
        if limit.bound == "max":
            return result(value, within(value, thr, "max"), f"{label} is {shown} (limit "
                          f"{thr_shown})", ci, ci is not None and ci[0] > thr, why)
        return result(value, within(value, thr, "min"), f"{label} is {shown} (at least "
                      f"{thr_shown})", ci, ci is not None and ci[1] < thr, why)

    entry = arm.get("delta", {}).get(task, {}).get(metric)
    measured = arm.get("metrics", {}).get(task, {})
    if metric in measured and not _finite(measured[metric]):
        return result(None, False, f"{label} is not a finite number for arm "
                      f"{arm['name']!r}: it never passes a gate")
    if entry is not None and not _finite(entry.get("value")):
        return result(None, False, f"{label}: its change is not finite for arm "
                      f"{arm['name']!r}: it never passes a gate")
    if entry is None:
        return result(None, False,
                      f"{label}: not in the report for arm {arm['name']!r} or the base")
    sign = direction(metric)
    d, ci = entry["value"], entry["ci"]
    # the drop's CI (> 0: the bad direction); a failing check counts when it lies wholly beyond
    # the limit: a drop's lower end above max_drop, a gain's upper end below min_gain
    drop_ci = sorted((-sign * ci[0], -sign * ci[1])) if ci is not None else None
    why = entry.get("no_ci") or "no predictions"  # f1, balanced_accuracy: not a per-sample mean
    drop = -sign * d                                      # > 0: moved in the bad direction
    moved, limit_shown = _shown(u, abs(d), abs(thr), amounts=True) \
        if limit.bound in ("max_drop", "min_gain") else (amount_text(d, u), "")
    if drop > 0:
        change = f"{'dropped' if sign > 0 else 'rose'} {moved}"
    else:
        change = f"improved by {moved}" if drop < 0 else "did not change"
    if limit.bound == "min_gain":
        need = f"{'-' if thr < 0 else ''}{limit_shown}"
        return result(-drop, within(-drop, thr, "min"),
                      f"{label} {change} (needs a gain of at least {need})", ci,
                      drop_ci is not None and -drop_ci[0] < thr, why)
    if limit.bound == "max_drop":
        return result(drop, within(drop, thr, "max"), f"{label} {change} (limit {limit_shown})",
                      ci, drop_ci is not None and drop_ci[0] > thr, why)
    base = arm["metrics"][task][metric] - d
    if base == 0:
        return result(None, False, f"{label}: base value is 0, a relative drop is undefined")
    rel = drop / abs(base)
    rel_ci = None if drop_ci is None else [x / abs(base) for x in drop_ci]  # the limit's units
    said = None if rel_ci is None else (f"{_ci_text(u, ci)}; the drop's: [{rel_ci[0] * 100:.2f}, "
                                        f"{rel_ci[1] * 100:.2f}] % of the base")
    return result(rel, within(rel, thr, "max"), f"{label} {change} = {rel * 100:.2f} % of the base "
                  f"(limit {thr * 100:.2f} %)", ci, rel_ci is not None and rel_ci[0] > thr, why,
                  said)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def evaluate_gate(gate: Gate, report_arm: dict, units: dict | None = None) -> dict:
    """Check one report arm against every limit: {"passed", "checks", "violations"}; `units`
    {task: {metric: unit}} (a report's), else each metric's declared one."""
    checks = [_check(limit, report_arm, units) for limit in gate.limits]
    return {"passed": all(c["passed"] for c in checks), "checks": checks,
            "violations": [c["message"] for c in checks if not c["passed"]]}


def units_of(gate: Gate | None, loss_of: Callable[[str], str | None]
             ) -> dict[str, dict[str, str]]:
    """{task: {metric: unit}} of the gate's limits as each task's objective (`loss_of(task)`,
    e.g. Recipe.loss_of) declares them: what a gate message reads in (motion's mse in m², the
    generic one bare)."""
    out: dict[str, dict[str, str]] = {}
    for l in gate.limits if gate is not None else ():
        out.setdefault(l.task, {})[l.metric] = unit(l.metric, loss_of(l.task))
    return out


def report_units(report: dict) -> dict[str, dict[str, str]]:
    """{task: {metric: unit}} a built report recorded (empty for a report without them)."""
    return {t: (report.get("tasks") or {}).get(t, {}).get("units") or {} for t in TASKS}


def apply_gate(gate: Gate, report: dict) -> dict[str, dict]:
    """Evaluate every arm of a built report, store each result as arm["gate"] and the gate in
    words as report["gate_limits"] (the top of the report), return the results.
    A limit on a metric the report's base does not have is a UserError (exit 2)."""
    kinds = {t: report["tasks"][t]["kind"] for t in TASKS}
    check_metrics(gate, {t: set(report["base_metrics"][t]) for t in TASKS}, kinds, "the run")
    results = {}
    for arm in report["arms"]:
        arm["gate"] = results[arm["name"]] = evaluate_gate(gate, arm, report_units(report))
    report["gate_limits"] = describe(gate, report_units(report))
    return results
