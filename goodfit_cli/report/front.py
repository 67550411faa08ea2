"""The Pareto front of a search's trials and the rules that pick its recommendation.

Inputs are plain data: every trial (`{"number", "state", "arm", "params", "old", "new",
"feasible", "gains"}`, old/new = each task's primary metric on validation). Both axes are
oriented by the metric's direction (`dirs`, +1 higher is better): one point dominates another
when it is at least as good on both tasks and better on one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from goodfit_cli.core.errors import UserError
from goodfit_cli.report.margin import within_noise


def dominates(a: tuple[float, float], b: tuple[float, float], dirs: tuple[int, int]) -> bool:
    """a is at least as good as b on both tasks and better on one (dirs: +1 higher is better)."""
    ge = all(d * x >= d * y for x, y, d in zip(a, b, dirs))
    return ge and any(d * x > d * y for x, y, d in zip(a, b, dirs))


def pareto_front(points: list[dict], dirs: tuple[int, int]) -> list[dict]:
    """The points (dicts with "old", "new") no other point dominates, sorted by the old task."""
    pts = [p for p in points if p.get("old") is not None and p.get("new") is not None]
    front = [p for p in pts if not any(dominates((q["old"], q["new"]), (p["old"], p["new"]), dirs)
                                       for q in pts if q is not p)]
    return sorted(front, key=lambda p: p["old"])


@dataclass(frozen=True)
class Rule:
    """How the recommendation is picked among the candidates (finished trials that pass the
    gate on validation and gain on the new task): `kind` new | knee | weight."""

    kind: str = "new"
    weight: float | None = None

    def __str__(self) -> str:
        return f"weight={self.weight:g}" if self.kind == "weight" else self.kind


def parse_rule(text: str) -> Rule:
    """'new', 'knee' or 'weight=W'; UserError (one line) otherwise."""
    t = text.strip().lower()
    if t in ("new", "knee"):
        return Rule(t)
    if t.startswith("weight="):
        try:
            w = float(t.split("=", 1)[1])
        except ValueError:
            w = math.nan
        if 0 <= w <= 1:
            return Rule("weight", w)
    raise UserError(f"--rule {text}: expected new, knee or weight=W with 0 <= W <= 1")


def candidates(trials: list[dict]) -> list[dict]:
    """The finished trials that pass the gate and gain on the new task over the base (a trial
    on the base's own new-task value learned nothing: `"gains": False`, never recommended)."""
    return [t for t in trials if t["state"] == "COMPLETE" and t["feasible"]
            and t.get("gains", True)]


def recommend(trials: list[dict], dirs: tuple[int, int], rule: Rule = Rule()) -> dict | None:
    """The candidate (`candidates`) `rule` picks (ties: the better new task, then the better old
    task, then the earlier trial); None when there is no candidate."""
    ok = candidates(trials)
    if not ok:
        return None
    tie = lambda t: (dirs[1] * t["new"], dirs[0] * t["old"], -t["number"])  # noqa: E731
    if rule.kind == "new":
        return max(ok, key=tie)
    pool = pareto_front(ok, dirs) if rule.kind == "knee" else ok
    scaled = {}  # each task oriented (higher is better) and scaled to [0, 1] over the pool
    for i, task in enumerate(("old", "new")):
        vals = [dirs[i] * t[task] for t in pool]
        lo, span = min(vals), max(vals) - min(vals)
        for t in pool:
            scaled.setdefault(t["number"], []).append((dirs[i] * t[task] - lo) / span
                                                      if span > 0 else 0.0)
    if rule.kind == "weight":
        w = rule.weight
        return max(pool, key=lambda t: (round(w * scaled[t["number"]][1]
                                              + (1 - w) * scaled[t["number"]][0], 12), *tie(t)))
    # knee: farthest from the line through the front's ends (best old: (1, 0); best new:
    # (0, 1) once scaled), on the side of the ideal point (1, 1)
    return max(pool, key=lambda t: (round(sum(scaled[t["number"]]) - 1, 12), *tie(t)))


def knee_note(rule: Rule, trials: list[dict], dirs: tuple[int, int]) -> str | None:
    """What --rule knee could not do: a front of fewer than three points has no knee (both ends
    lie on the line between them), so the tie-break (the most new-task gain) chose; None
    otherwise."""
    front = pareto_front(candidates(trials), dirs)
    if rule.kind != "knee" or not front or len(front) >= 3:
        return None
    return (f"--rule knee: the front has {len(front)} point{'s' if len(front) > 1 else ''}, so "
            "it has no knee (a point off the line between its ends); the tie-break picked the "
            "one with the most new-task gain")


def close_calls(rec: dict | None, trials: list[dict], n: int | None,
                z: float = 1.0) -> dict | None:
    """How sure the choice is: the other candidates (`candidates`) whose new-task validation
    value lies within `z` standard errors of the recommendation's (margin.within_noise: of a
    proportion observed at the recommendation's value on the new task's `n` validation samples). On a
    small validation split the best of many trials wins partly by luck (its test value lands
    below its validation value: docs/results.md, "the winner's curse"), and these are the
    trials the split cannot tell from it. None without a recommendation or a sample count
    (the new task's metric is not a rate: a loss, mse)."""
    if rec is None or not n:
        return None
    ok = candidates(trials)
    se, near = within_noise(rec["new"], [(t["number"], t["new"]) for t in ok
                                         if t["number"] != rec["number"]], n, z)
    return {"n": n, "z": z, "se": se, "trials": near, "candidates": len(ok)}


def dominance_against(point: dict, refs: list[dict], dirs: tuple[int, int]) -> dict[str, str]:
    """For each reference (a default arm): 'dominates', 'dominated' or 'trade-off' on the
    points' "old"/"new" (validation), then "; on test: ..." when both carry test_old/test_new."""
    def word(a: tuple, b: tuple) -> str:
        return ("dominates" if dominates(a, b, dirs) else
                "dominated" if dominates(b, a, dirs) else "trade-off")

    out = {}
    for r in refs:
        out[r["name"]] = word((point["old"], point["new"]), (r["old"], r["new"]))
        tests = [point.get("test_old"), point.get("test_new"), r.get("test_old"),
                 r.get("test_new")]
        if all(v is not None for v in tests):
            out[r["name"]] += f"; on test: {word(tuple(tests[:2]), tuple(tests[2:]))}"
    return out
