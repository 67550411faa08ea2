"""A gate judged on validation with a margin for the validation set's size.

A choice made on validation (the search's α per trial, its feasible trials, its
recommendation) picks, among many candidates, those whose validation value clears a bound; the
winner's validation value is optimistic, so the same model on the test split lands below the
bound about half the time when it sat on it. `tightened` moves every limit on a rate metric (a
share in [0, 1]: accuracy, flip rates) inward by `z` standard errors of a proportion measured on
the validation split's n samples, sqrt(p (1 - p) / n), with p the value at the bound (for a drop
or a gain: the base's value moved by the limit). z = 0.5 (the search's default): a point passes on
validation only when it clears the bound by half a standard error (on 288 validation images and
a 0.95 floor: 0.0064, so the floor read on validation is 0.9564; z = 1 reads it at 0.9628).
Limits on other metrics (a loss, mse), and any limit whose task has no sample count, are
unchanged; z = 0 is the gate itself.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from goodfit_cli.core.units import value_text
from goodfit_cli.objectives import direction, is_rate, unit
from goodfit_cli.report.gate import FLIP_METRICS, TASKS, VALUE_BOUNDS, Gate, Limit, within, worded

DEFAULT_Z = 0.5  # `goodfit search --val-margin`'s default (docs/method.md: why half)


def sizes(view: dict) -> dict[str, int]:
    """The number of samples each task's view was measured on (its flip record's n), {} if
    none is stored (a WiSE point without predictions, a regression task)."""
    flips = view.get("flips") or {}
    return {t: int(flips[t]["n"]) for t in TASKS if (flips.get(t) or {}).get("n")}


def split_counts(validation: Any, split: str = "val") -> dict[str, int]:
    """Each task's sample count on `split` ("val", "test") from a run's validation record
    (run.json / provenance "validation": {task: {"source", "train", "val", "test"}})."""
    return {t: v[split] for t, v in (validation or {}).items()
            if isinstance(v, dict) and isinstance(v.get(split), int)}


def pred_sizes(preds: dict) -> dict[str, int]:
    """The number of samples of each task's predictions ({task: {"target": (N, ...)}}), the
    counts `sizes` reads from a stored view."""
    return {t: len(p["target"]) for t, p in preds.items()
            if isinstance(p, dict) and p.get("target") is not None}


def proportion_se(p: float, n: int) -> float:
    """The standard error of a proportion p measured on n samples, sqrt(p (1 - p) / n)."""
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / n)


def observed_se(p: float, n: int) -> float:
    """The standard error of a proportion observed as p on n samples, with the counts
    Laplace-smoothed ((p n + 1) / (n + 2)) so that an observed 0 or 1 still has one (1 of 24
    right, or all 24: about 0.04, where the plain formula says 0)."""
    return proportion_se((min(max(p, 0.0), 1.0) * n + 1) / (n + 2), n)


def within_noise(chosen: float, others: list[tuple[Any, float]], n: int,
                 z: float = 1.0) -> tuple[float, list[Any]]:
    """(the standard error `observed_se(chosen, n)`, the keys of `others` ((key, value) pairs)
    whose value lies within z of them of `chosen`): what a choice's close calls are built of
    (report/front.py close_calls, report/verdict.py)."""
    se = observed_se(chosen, n)
    return se, [k for k, v in others if abs(v - chosen) <= z * se + 1e-12]


def _moved(limit: Limit, n: int, z: float, base: float | None) -> Limit:
    """`limit` moved inward by z standard errors at its bound (unchanged when its bound needs a
    base value that is unknown)."""
    thr, metric = limit.threshold, limit.metric
    sign = -1 if metric in FLIP_METRICS else direction(metric)  # flip rates: lower is better
    if limit.bound == "min":
        return replace(limit, threshold=thr + z * proportion_se(thr, n))
    if limit.bound == "max":
        return replace(limit, threshold=thr - z * proportion_se(thr, n))
    if base is None:
        return limit
    if limit.bound == "max_drop":
        return replace(limit, threshold=thr - z * proportion_se(base - sign * thr, n))
    if limit.bound == "max_drop_rel":
        if base == 0:
            return limit
        return replace(limit, threshold=thr - z * proportion_se(base - sign * thr * abs(base), n)
                       / abs(base))
    return replace(limit, threshold=thr + z * proportion_se(base + sign * thr, n))  # min_gain


def tightened(gate: Gate | None, view: dict, z: float,
              n: dict[str, int] | None = None) -> Gate | None:
    """`gate` with its limits on rate metrics moved inward by `z` standard errors (see the
    module's docstring) for `view` ({"metrics", "delta", "flips"}: the base's value is the
    view's metric minus its change); `n` the samples per task (default: the view's flips)."""
    if gate is None or not z > 0:
        return gate
    n = n if n is not None else sizes(view)
    limits = []
    for limit in gate.limits:
        count = n.get(limit.task)
        if not count or not is_rate(limit.metric):
            limits.append(limit)
            continue
        value = ((view.get("metrics") or {}).get(limit.task) or {}).get(limit.metric)
        change = (((view.get("delta") or {}).get(limit.task) or {}).get(limit.metric) or {})
        base = (value - change["value"] if isinstance(value, (int, float))
                and isinstance(change.get("value"), (int, float)) else None)
        limits.append(_moved(limit, count, z, base))
    return replace(gate, limits=tuple(limits))


def _outside(gate: Gate, values: dict, z: float, count: int | None) -> list[tuple]:
    """(limit, the limit as read with the margin, the value) for each old-task floor or ceiling
    (not a flip rate) that `values` ({metric: value}) fails."""
    bad = []
    for limit in gate.limits:
        value = values.get(limit.metric)
        if (limit.task != "old" or limit.bound not in VALUE_BOUNDS or limit.metric in FLIP_METRICS
                or not isinstance(value, (int, float))):
            continue
        read = (_moved(limit, count, z, None) if count and z > 0 and is_rate(limit.metric)
                else limit)
        if not within(value, read.threshold, limit.bound):
            bad.append((limit, read, value))
    return bad


def base_outside(gate: Gate | None, base_val: dict, z: float = 0.0,
                 n: dict[str, int] | None = None, base_test: dict | None = None,
                 units: dict | None = None) -> dict | None:
    """The old task's floors and ceilings (not flip rates) that the base itself fails on
    validation, each read there as the choices read it (moved inward by `z` standard errors of
    `n`'s sample counts, as `tightened`): then no update passes the gate on validation unless it
    does better than the base there, however well the base scores on test. {"limits": [names],
    "message"} or None. `base_val`, `base_test`: {task: {metric: value}}; the test value is only
    quoted. Drops and gains are read from the base's own value, which passes them; a new task's
    floor is the fine-tune's to reach. `units`: {task: {metric: unit}} (gate.units_of)."""
    if gate is None:
        return None
    count = (n or {}).get("old")
    bad = _outside(gate, base_val.get("old") or {}, z, count)
    if not bad:
        return None
    said = []
    for limit, read, value in bad:
        u = _old_unit(units, limit.metric)
        where = f"on {count} samples" if count else "there"
        moved = (f", read there as {value_text(read.threshold, u)} with the validation "
                 "margin" if read.threshold != limit.threshold else "")
        test = ((base_test or {}).get("old") or {}).get(limit.metric)
        on_test = f" (test: {value_text(test, u)})" if isinstance(test, (int, float)) else ""
        said.append(f"old {limit.metric} {value_text(value, u)} {where}{on_test} against "
                    f"{worded(limit, units)}{moved}")
    return {"limits": [limit.name for limit, *_ in bad],
            "message": ("warning: the base itself fails the gate on validation: "
                        + "; ".join(said) + ". No update passes there unless it does better "
                        "than the base on that metric; a limit read from the base's own "
                        "validation value (--max-old-drop) does not depend on how hard the "
                        "validation split is")}


def _old_unit(units: dict | None, metric: str) -> str:
    return ((units or {}).get("old") or {}).get(metric, unit(metric))


def base_outside_test(gate: Gate | None, base_test: dict,
                      n: dict[str, int] | None = None, units: dict | None = None) -> dict | None:
    """The old task's floors and ceilings the base itself fails on the test split, as the
    report's test gate reads them (no margin): an update that fails them there may not have
    broken anything. Reported only; no choice reads it. {"limits", "message"} or None."""
    if gate is None:
        return None
    count = (n or {}).get("old")
    bad = _outside(gate, base_test.get("old") or {}, 0.0, count)
    if not bad:
        return None
    where = f" on {count} samples" if count else ""
    said = "; ".join(f"old {limit.metric} {value_text(value, _old_unit(units, limit.metric))}"
                     f"{where} against {worded(limit, units)}"
                     for limit, _, value in bad)
    return {"limits": [limit.name for limit, *_ in bad],
            "message": (f"note: the base itself fails the gate on test: {said}. It was not "
                        "met before this update either (test numbers are reported, never used "
                        "to choose)")}


def base_against_gate(gate: Gate | None, measured: tuple, z: float = 0.0,
                      units: dict | None = None) -> dict[str, dict]:
    """The base's own readings against the gate, as provenance entries (only those found):
    "base_outside_gate" on validation (`base_outside`, read with margin `z`; to be said),
    "base_outside_gate_test" on test (`base_outside_test`; reported only). `measured`: the
    base's (test metrics, test predictions, validation metrics, validation predictions);
    `units`: {task: {metric: unit}} the messages read in (gate.units_of)."""
    metrics, preds, val, val_preds = measured
    found = {"base_outside_gate": base_outside(gate, val, z, pred_sizes(val_preds), metrics,
                                               units),
             "base_outside_gate_test": base_outside_test(gate, metrics, pred_sizes(preds),
                                                         units)}
    return {k: v for k, v in found.items() if v}


def floor_slack(gate: Gate | None, metric: str, value: float | None,
                n: int | None) -> list[dict[str, Any]]:
    """How far the chosen point's old-task `value` of `metric` (a rate, read on `n` validation
    samples) clears each floor or ceiling the gate puts on it, in its own units and in standard
    errors of that reading (`observed_se`): what fresh data can take back. [] without a gate,
    a count or a rate."""
    if gate is None or not n or value is None or not is_rate(metric):
        return []
    se = observed_se(value, n)
    out = []
    for limit in gate.limits:
        if limit.task != "old" or limit.metric != metric or limit.bound not in VALUE_BOUNDS:
            continue
        slack = (value - limit.threshold) * (1 if limit.bound == "min" else -1)
        out.append({"limit": limit.name, "slack": slack, "se": se, "n": n,
                    "z": slack / se if se > 0 else math.inf})
    return out
