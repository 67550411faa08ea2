"""How a report's numbers read in both renderers and the terminal: a value, a change and its CI
in the metric's unit (core/units.py), its better/worse marker, and the unit a report recorded for
a metric (a report written before units: the metric's declaration)."""

from __future__ import annotations

from goodfit_cli.core.units import ci_text, delta_text, marker, value_text
from goodfit_cli.objectives import unit

_DASH = "—"


def unit_in(report: dict, task: str, metric: str) -> str:
    """The unit of `metric` on `task` (the report's "units": from the task's objective;
    a report written before them: from the declarations)."""
    shown = ((report.get("tasks") or {}).get(task) or {}).get("units") or {}
    return shown[metric] if metric in shown else unit(metric)


def fmt_value(metric: str, v: float | None, shown: str | None = None) -> str:
    """'87.50 %', '7.945 m', '0.1234': as the metric's unit (`shown`, else its declaration)."""
    return value_text(v, unit(metric) if shown is None else shown, missing=_DASH)


def fmt_delta(metric: str, d: float, shown: str | None = None) -> str:
    return delta_text(d, unit(metric) if shown is None else shown)


def fmt_ci(metric: str, ci: list | None, shown: str | None = None) -> str:
    return ci_text(ci, unit(metric) if shown is None else shown)


def _marker(entry: dict) -> str:
    """'▲ (better)', '▼ (worse)', '= (same)': the arrow is the sign, the word the direction."""
    arrow, word = marker(entry["better"], entry["value"])
    return f"{arrow} ({word})" if word else arrow


def _delta_text(metric: str, entry: dict | None, shown: str | None = None) -> str:
    if entry is None:
        return _DASH
    ci = fmt_ci(metric, entry["ci"], shown)
    if not ci and entry.get("no_ci"):  # e.g. balanced_accuracy: no paired bootstrap applies
        ci = f"(no CI: {entry['no_ci']})"
    return f"{fmt_delta(metric, entry['value'], shown)} {_marker(entry)}" + (f" {ci}" * bool(ci))


def _tone(entry: dict | None) -> str:
    if entry is None or entry["value"] == 0 or entry["better"] is None:
        return ""
    return "better" if entry["better"] else "worse"
