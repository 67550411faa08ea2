"""How one finished search trial is judged from what the study stores: its primary metrics,
whether it gains on the new task over the base, the gate on a stored view, and the WiSE-FT α
it keeps (chosen on validation). Pure functions of stored results, so a study re-judged under
another gate (workflows/search.py) needs no retraining.
"""

from __future__ import annotations

from goodfit_cli.report.gate import Gate, evaluate_gate
from goodfit_cli.report.margin import sizes, split_counts, tightened
from goodfit_cli.report.verdict import gained, point_view  # noqa: F401  (gained: theirs)


def pick(metrics: dict, prim: dict[str, str]) -> tuple:
    """(old, new): each task's primary metric of {"old": {...}, "new": {...}}."""
    return (metrics.get("old") or {}).get(prim["old"]), (metrics.get("new") or {}).get(prim["new"])


def best_alpha(gate: Gate | None, rep: dict, dirs: tuple[int, int], z: float = 0.0,
               none: float | None = 1.0) -> float | None:
    """The α of the arm's WiSE-FT curve (0 < α <= 1; the base's own point, α = 0, is never
    a candidate, nor any point no better than the base on the new task) with the best new-task
    primary metric on validation among the points that pass the gate on validation (old task
    breaks ties, then the larger α); `none` (1.0: the arm) when none passes. A point α < 1 is
    judged with the flips its curve stored ("val_flips"); a flip-rate limit counts one without
    them (a run of an older goodfit) as failing. `z`: the validation margin
    (report/margin.py), the sample counts `val_counts(rep)`."""
    arm, po, pn = rep["arms"][0], rep["tasks"]["old"]["primary"], rep["tasks"]["new"]["primary"]
    view = {"metrics": arm["validation"]["metrics"], "delta": arm["validation"]["delta"],
            "flips": arm["validation"]["flips"]}
    alpha = best_on_validation(gate, arm.get("wise") or [], rep["base_val_metrics"], (po, pn),
                               dirs, arm_view=view, z=z, n=val_counts(rep))
    return none if alpha is None else alpha


def best_candidate(gate: Gate | None, rep: dict, dirs: tuple[int, int],
                   z: float = 0.0) -> tuple[int, float | None]:
    """(the index in rep["arms"], its `best_alpha`) of the fine-tune's candidate whose best
    point on validation is best: its arm, or its '<arm>+ema' (finetune.ema), by the new task's
    primary metric, then the old task's, then the arm itself; (0, None) when no point of any
    passes the gate and gains (the arm itself is the trial's point)."""
    po, pn = rep["tasks"]["old"]["primary"], rep["tasks"]["new"]["primary"]
    found = []
    for i, arm in enumerate(rep["arms"]):
        alpha = best_alpha(gate, {**rep, "arms": [arm]}, dirs, z, none=None)
        if alpha is not None:
            val = next((w["val"] for w in arm.get("wise") or [] if w["alpha"] == alpha and
                        alpha < 1), arm["validation"]["metrics"])
            old, new = pick(val, {"old": po, "new": pn})
            found.append((dirs[1] * new, dirs[0] * old, -i, alpha))
    return (0, None) if not found else (-max(found)[2], max(found)[3])


def point_name(t: dict) -> str:
    """What a search trial's point (its checkpoint, its numbers) is of: with finetune.ema the
    candidate chosen (its arm or its '<arm>+ema', the knob `candidate`), else its arm."""
    return (t.get("params") or {}).get("candidate") or t["arm"]


def shipped_name(t: dict) -> str:
    """What a search trial ships, as the log, the reports and the console name it: its arm,
    or '<arm> (EMA)' when its point is the arm's '<arm>+ema' candidate (finetune.ema: the
    exponential moving average of that arm's weights), so no reader takes it for the arm."""
    return ema_label(t["arm"], point_name(t))


def ema_label(arm: str, candidate: str) -> str:
    """`candidate` (a fine-tune's arm, or its '<arm>+ema') as the reports name it: '<arm>
    (EMA)' for the arm's EMA, else its own name."""
    return f"{arm} (EMA)" if candidate == f"{arm}+ema" else candidate


def val_counts(rep: dict) -> dict[str, int]:
    """Each task's validation sample count of a fine-tune's report: its run's validation record
    (provenance "validation", as the verdict and `goodfit finetune`'s WiSE choice read it;
    a regression task stores no flips), else its first arm's validation flips."""
    counts = split_counts((rep.get("provenance") or {}).get("validation"))
    return counts or sizes(rep["arms"][0].get("validation") or {})


def best_on_validation(gate: Gate | None, curve: list[dict], base_val: dict,
                       prim: tuple[str, str], dirs: tuple[int, int],
                       arm_view: dict | None = None, z: float = 0.0,
                       n: dict[str, int] | None = None) -> float | None:
    """best_alpha's rule on a WiSE-FT curve's validation numbers ({"alpha", "val"} points):
    the interior points (0 < α < 1), and α = 1 when `arm_view` (the arm's validation view,
    with its flips) is given; None when no point gains over the base and passes the gate.
    `goodfit finetune` measures its arms' interior choices on test with this (arm_view None:
    the arm itself is measured already), so each arm's chosen point has test numbers."""
    po, pn = prim
    base = pick(base_val, {"old": po, "new": pn})
    ok = []
    for w in curve:
        val = w.get("val") or {}
        pt = ((val.get("old") or {}).get(po), (val.get("new") or {}).get(pn))
        interior = 0 < w["alpha"] < 1
        if (not (interior or (w["alpha"] == 1 and arm_view is not None))
                or any(v is None for v in pt) or not gained(pt, base, dirs)):
            continue
        view = point_view(val, base_val, w.get("val_flips"), w.get("val_ci")) if interior \
            else arm_view
        if judge(gate, view, f"WiSE α {w['alpha']:g}", z, n)["passed"]:
            ok.append((dirs[1] * pt[1], dirs[0] * pt[0], w["alpha"]))
    return max(ok)[2] if ok else None


def judge(gate: Gate | None, view: dict, name: str, z: float = 0.0,
          n: dict[str, int] | None = None, units: dict | None = None) -> dict:
    """The gate's result on one stored view ({"metrics", "delta", "flips"}); no gate: passes.
    `z` > 0: each limit on a rate metric moved inward by z standard errors of the view's
    sample counts (`n`, default its flips'; report/margin.py), for a view a choice reads.
    `units`: {task: {metric: unit}} the messages read in (gate.units_of: the objectives')."""
    if gate is None:
        return {"passed": True, "violations": [], "checks": []}
    return evaluate_gate(tightened(gate, view, z, n), {"name": name, **view}, units)
