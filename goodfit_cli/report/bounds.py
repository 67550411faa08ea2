"""Which gate bounds can never decide anything (refused) and which are odd but possible (a note).

A metric declares the values it can take (`core.metrics.Metric.possible`: a rate [0, 1]; an
error or a distance never below 0). A `max` or `min` bound outside that range is decided
before any run (a ceiling below 0 m always fails, a floor below 0 m always passes), as is a
drop, value or gain of a share beyond 1: one line refuses it. A floor on a lower-is-better
metric (`--min-old ade@8s=3`: the arm must err by at least 3 m) or a ceiling on a
higher-is-better one is possible but most likely meant the other way: a note says so.
"""

from __future__ import annotations

from goodfit_cli.core.units import value_text
from goodfit_cli.objectives import metric as declaration
from goodfit_cli.objectives import unit

_FLAG = {("old", "min"): "--min-old", ("old", "max"): "--max-old", ("new", "min"): "--min-new",
         ("new", "max"): "--max-new"}


def impossible(metric: str, bound: str, v: float) -> str | None:
    """Why `bound` v on `metric` can never be decided by its values, else None."""
    m = declaration(metric)
    if m is None:
        return None
    if m.rate:
        if (-1.0 if bound == "min_gain" else 0.0) <= v <= 1.0:
            return None
        return (f"{metric} is a share in [0, 1] (0.05 = 5 pts), so {bound} {v:g} can never be "
                f"decided by it; give it as a share")
    low = m.possible[0]
    if bound in ("max", "min") and v < low:
        u = f" {unit(metric)}" if unit(metric) else ""  # mse: m² for motion only, so none
        return (f"{metric} is never below {low:g}{u}, so {bound} {v:g} "
                f"{'always fails' if bound == 'max' else 'always passes'}")
    return None


def odd(task: str, metric: str, bound: str, v: float, source: str = "flags") -> str | None:
    """A note for a floor on a lower-is-better metric or a ceiling on a higher-is-better one
    (possible, probably meant the other way), else None; `source`: the gate file or flags."""
    m = declaration(metric)
    if m is None or bound not in ("max", "min") or (bound == "max") == (not m.higher_is_better):
        return None
    shown = value_text(v, unit(metric))  # '3 m', '99.00 %': as the reports show it
    better = "higher" if m.higher_is_better else "lower"
    other = _FLAG[(task, "max" if bound == "min" else "min")]
    what, need = (("a floor", "at least") if bound == "min" else ("a ceiling", "at most"))
    said, fix = ((f"{_FLAG[(task, bound)]} {metric}={v:g}", f"{other} {metric}={v:g}")
                 if source == "flags" else
                 (f"{source}: {task} {metric} {bound} {v:g}", f"{other.rsplit('-', 1)[0][2:]}"))
    return (f"note: {said} is {what} on a {better}-is-better metric: an arm passes only with "
            f"{task} {metric} {need} {shown}; for the other side use {fix}")
