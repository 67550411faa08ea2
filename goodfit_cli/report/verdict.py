"""The verdict of a finetune or compare report: which candidate is dominated, which one to ship.

Chosen on VALIDATION, confirmed on TEST. The candidates are the report's arms and, for each arm
with a WiSE-FT curve, its interior points (0 < α < 1: α = 0 is the base, α = 1 the arm) measured
on test: `goodfit finetune` evaluates the grid on validation and measures on test only the arm's
chosen point (report/trials.py `best_on_validation`). On the two primary metrics (old task, new
task; each in its own direction), a point dominates another when it is at least as good on both
and better on one.

- For each arm: the arms, WiSE points and the base that dominate it on validation, and whether
  each of them also dominates it on test ("confirmed").
- What to ship (the rule, the same as the search's): among the candidates that pass the gate on
  validation (every candidate when there is no gate) and gain on the new task over the base
  there, the best new-task primary metric on validation, the old task's breaking ties (an
  exact tie on both: the first in the report's order, an arm before its WiSE points, and the
  others named, `tied_with`; equal points never dominate each other); when none does, ship
  nothing (keep the base): an update that learns nothing of the new task is never shipped,
  whatever it keeps. The test numbers and the test gate of the choice are shown beside it;
  they do not choose.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from goodfit_cli.core import metrics as M
from goodfit_cli.objectives import direction, is_rate
from goodfit_cli.report.build import paired_cis
from goodfit_cli.report.gate import Gate, evaluate_gate
from goodfit_cli.report.margin import (
    floor_slack,
    sizes,
    split_counts,
    tightened,
    within_noise,
)

RULE = ("ship the candidate (an arm, or the WiSE-FT point 0 < α < 1 chosen for it on "
        "validation) with the best new-task {pn} on validation among those that pass the gate on "
        "validation (every candidate when there is no gate) and gain on the new task over the "
        "base there (old-task {po} breaks ties); if none does, ship nothing and keep the base. "
        "Test numbers confirm the choice, they never make it.")
# `goodfit compare` measures the checkpoints it is given, no WiSE-FT point (a point becomes a
# checkpoint to compare with `goodfit wise`): its verdict may differ from the run's finetune
COMPARED = ("ship the compared checkpoint with the best new-task {pn} on validation among "
            "those that pass the gate on validation (every one when there is no gate) and gain "
            "on the new task over the base there (old-task {po} breaks ties); if none does, ship "
            "nothing and keep the base. compare measures "
            "no WiSE-FT point (goodfit wise makes one a checkpoint to compare), so a run's "
            "finetune verdict may ship a point compare does not see. Test numbers confirm the "
            "choice, they never make it.")


def directions(report: dict) -> tuple[int, int]:
    """(old, new) primary metrics' directions: +1 higher is better, -1 lower is better."""
    return (direction(report["tasks"]["old"]["primary"]),
            direction(report["tasks"]["new"]["primary"]))


def gained(point: tuple, base: tuple | list | None, dirs: tuple[int, int]) -> bool:
    """Whether `point` (old, new) is better than the base's on the new task (True when the
    base's is unknown)."""
    if base is None or base[1] is None:
        return True
    return point[1] is not None and dirs[1] * (point[1] - base[1]) > 0


def dominates(a: tuple[float, float], b: tuple[float, float], dirs: tuple[int, int]) -> bool:
    """a is at least as good as b on both tasks and better on one."""
    ge = all(d * x >= d * y for x, y, d in zip(a, b, dirs))
    return ge and any(d * x > d * y for x, y, d in zip(a, b, dirs))


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
               for x in xs)


def _pair(metrics: dict | None, po: str, pn: str) -> tuple[float, float] | None:
    m = metrics or {}
    pt = ((m.get("old") or {}).get(po), (m.get("new") or {}).get(pn))
    return pt if _finite(*pt) else None


def point_view(metrics: dict, base: dict, flips: dict | None = None,
               cis: dict | None = None) -> dict:
    """A WiSE point as the gate reads an arm: metrics and changes against the base's (with
    their CIs where `cis` has them: `point_measure`), and its flips against the base where they
    were measured: a flip-rate limit counts a point without them as failing."""
    delta = {t: {m: {"value": v - base[t][m], "ci": ((cis or {}).get(t) or {}).get(m),
                     "better": None}
                 for m, v in (metrics.get(t) or {}).items()
                 if _finite(v) and _finite((base.get(t) or {}).get(m))} for t in ("old", "new")}
    return {"metrics": metrics, "delta": delta, "flips": flips or {}}


def significance(gate: Gate | None) -> dict | None:
    """The bootstrap a point's changes get CIs from (the report's own: 1000 paired resamples,
    seed 0) when `gate` has a limit with require_significant, which reads them as it reads an
    arm's; None otherwise (a choice then reads the values alone, and nothing is drawn)."""
    if gate is None or not any(limit.require_significant for limit in gate.limits):
        return None
    return {"n_boot": 1000, "seed": 0, "draws": {}}


def point_measure(base_preds: dict | None, preds: dict, kinds: dict[str, str],
                  boot: dict | None = None) -> tuple[dict, dict]:
    """(flips, CIs) of a point's predictions against the base's on the same samples: flips
    {task: {"nfr", "pfr", "n_neg", "n_pos", "n"}} for each classification task and, with
    `boot` (`significance`), their CIs and {task: {metric: [lo, hi]}}, each change's paired
    bootstrap CI as an arm's (report/build.py `paired_cis`); without, no CIs ({})."""
    flips, cis = {}, {}
    for t, kind in kinds.items():
        b, p = (base_preds or {}).get(t), preds.get(t)
        if not (b and p and "pred" in b and "pred" in p
                and torch.equal(b["target"].cpu(), p["target"].cpu())):  # the same samples
            continue
        if boot is not None:
            cis[t], task_flips = paired_cis(b, p, kind, boot)
            flips.update({t: task_flips} if task_flips is not None else {})
        elif kind == "classification":
            flips[t] = M.flips(b["pred"], p["pred"], b["target"])
    return flips, cis


def _point_view(name: str, metrics: dict, base: dict, flips: dict | None = None,
                cis: dict | None = None) -> dict:
    return {"name": name, **point_view(metrics, base, flips, cis)}


def _candidates(report: dict, po: str, pn: str) -> list[dict]:
    """Arms and interior WiSE points with their validation and test views."""
    out = []
    for a in report["arms"]:
        v = a.get("validation")
        if v is None:
            continue
        out.append({"name": a["name"], "kind": "arm", "arm": a["name"],
                    "val": _pair(v["metrics"], po, pn), "test": _pair(a["metrics"], po, pn),
                    "val_view": {"name": a["name"], **v}, "test_view": a})
        for w in a.get("wise") or []:
            if not 0 < w["alpha"] < 1 or "val" not in w or "new" not in w:
                continue  # a point measured on validation only: the grid, not a candidate
            name = f"{a['name']}@wise{w['alpha']:g}"
            test = {"old": w.get("old") or {}, "new": w.get("new") or {}}
            out.append({"name": name, "kind": "wise", "arm": a["name"], "alpha": w["alpha"],
                        "val": _pair(w["val"], po, pn), "test": _pair(test, po, pn),
                        "val_view": _point_view(name, w["val"], report["base_val_metrics"],
                                                w.get("val_flips"), w.get("val_ci")),
                        "test_view": _point_view(name, test, report["base_metrics"],
                                                 w.get("flips"), w.get("ci"))})
    return out


def verdict(report: dict, gate: Gate | None, z: float = 0.0,
            units: dict | None = None) -> dict | None:
    """{"split", "rule", "gate", "arms": [...], "ship": {...} | None, "note"}; None when the
    report has no validation measurements (nothing to choose on). `z`: the gate is read on
    validation that many standard errors inside its limits on rates (a search's trial: its
    --val-margin, as the search judges it; report/margin.py). `units`: the report's, for the
    messages of a shipped WiSE point's test gate (`ship["gate"]`, as an arm's)."""
    if "base_val_metrics" not in report:
        return None
    po, pn = report["tasks"]["old"]["primary"], report["tasks"]["new"]["primary"]
    dirs = directions(report)
    cands = _candidates(report, po, pn)
    base = {"name": "base", "kind": "base", "val": _pair(report["base_val_metrics"], po, pn),
            "test": _pair(report["base_metrics"], po, pn)}
    counts = split_counts((report.get("provenance") or {}).get("validation")) or None
    for c in cands:
        c["passes_val"] = c["val"] is not None and (gate is None or evaluate_gate(
            tightened(gate, c["val_view"], z, counts), c["val_view"])["passed"])
        c["gains_val"] = c["val"] is not None and gained(c["val"], base["val"], dirs)
    arms = []
    for c in [c for c in cands if c["kind"] == "arm"]:
        by = []
        for o in [*cands, base]:
            if o is c:
                continue
            if c["val"] is not None and o["val"] is not None and dominates(o["val"], c["val"],
                                                                           dirs):
                by.append({"name": o["name"], "confirmed_on_test": bool(
                    c["test"] is not None and o["test"] is not None
                    and dominates(o["test"], c["test"], dirs))})
        confirmed = [d["name"] for d in by if d["confirmed_on_test"]]
        status = ("dominated, confirmed on test" if confirmed else
                  "dominated on validation only" if by else "not dominated")
        arms.append({"name": c["name"], "val": _point(c["val"]), "test": _point(c["test"]),
                     "passes_gate_val": c["passes_val"], "gains_val": c["gains_val"],
                     "dominated_by": by, "status": status})
    ok = [c for c in cands if c["passes_val"] and c["gains_val"]]
    ship = None
    if ok:
        best = max(ok, key=lambda c: (dirs[1] * c["val"][1], dirs[0] * c["val"][0]))  # the
        tied = [c["name"] for c in ok if c is not best and c["val"] == best["val"]]  # first
        point_gate = (evaluate_gate(gate, best["test_view"], units)
                      if gate is not None and best["kind"] == "wise" else None)
        test_gate = (None if gate is None else point_gate["passed"] if point_gate is not None
                     else (best["test_view"].get("gate") or {}).get("passed"))
        ship = {"name": best["name"], "kind": best["kind"], "arm": best["arm"],
                "alpha": best.get("alpha"), "val": _point(best["val"]),
                "test": _point(best["test"]), "passes_gate_test": test_gate,
                "close_calls": _close_calls(report, best, ok, pn),
                "floor_slack": floor_slack(gate, po, best["val"][0], _val_count(report, "old")),
                **({"gate": point_gate} if point_gate is not None else {}),  # judged as an arm
                **({"tied_with": tied} if tied else {})}  # equal on validation: report order
    note = None
    flip_tasks = {l.task for l in gate.limits if l.metric in ("nfr", "pfr")} if gate else set()
    blind = [c["name"] for c in cands if c["kind"] == "wise"
             and not flip_tasks <= set(c["val_view"]["flips"])]
    if blind:  # a report made before WiSE points counted their flips (or without the base's)
        note = (f"WiSE points with no flips counted against the base ({', '.join(blind[:3])}"
                f"{', ...' if len(blind) > 3 else ''}): a flip-rate limit counts them as failing")
    why = None if ship else (
        "no candidate passes the gate on validation" if not any(c["passes_val"] for c in cands)
        else "no candidate that passes the gate on validation gains on the new task over the "
             "base there" if gate is not None
        else "no candidate gains on the new task over the base on validation")
    return {"split": "val", "confirmed_on": "test", "metrics": [po, pn], "none_because": why,
            "rule": (COMPARED if (report.get("provenance") or {}).get("command") == "compare"
                     else RULE).format(po=po, pn=pn) + (
                f" The gate is read on validation {z:g} standard errors inside each limit on a "
                "rate (the search's --val-margin)." if z > 0 else ""), "arms": arms, "ship": ship,
            "candidates": len(cands), "note": note, **({"val_margin": z} if z > 0 else {})}


def _close_calls(report: dict, best: dict, ok: list[dict], pn: str) -> dict | None:
    """The other passing candidates whose new-task validation value is within one standard
    error (of a proportion observed at the shipped one's value on the new task's validation samples)
    of the shipped candidate's: what the validation split cannot tell from it (the search's
    report/front.py close_calls, over arms and WiSE points). None when the new task's metric
    is not a rate or no arm stored its validation sample count."""
    if not is_rate(pn):
        return None
    n = _val_count(report, "new")
    if not n:
        return None
    se, names = within_noise(best["val"][1], [(c["name"], c["val"][1]) for c in ok
                                              if c is not best], n)
    return {"n": n, "z": 1.0, "se": se, "names": names}


def _val_count(report: dict, task: str) -> int | None:
    """The task's validation sample count: the run's validation record's (a regression task
    stores no flips), else the first arm's that stored one (its flips: an older report)."""
    recorded = split_counts((report.get("provenance") or {}).get("validation")).get(task)
    return recorded or next((k for k in (sizes(a.get("validation") or {}).get(task)
                                         for a in report["arms"]) if k), None)


def _point(p: tuple[float, float] | None) -> dict | None:
    return None if p is None else {"old": p[0], "new": p[1]}


def shipped_checks(v: dict | None, gated: bool) -> dict[str, dict]:
    """What `goodfit finetune` gates besides its arms (each arm's result is its own): the
    WiSE-FT point its verdict ships, judged on test as an arm ({"<arm>@wise<α>": result}), or,
    when the verdict ships nothing, a failed check "verdict" (the report says keep the base:
    a CI job must not pass it as an update to merge). {} without a gate, a verdict, or when
    it ships an arm (the arm's own result says it)."""
    if not gated or not v:
        return {}
    ship = v.get("ship")
    if ship is None:
        why = v.get("none_because") or "no candidate passes the gate on validation"
        msg = f"the verdict ships nothing: {why}; keep the base"
        return {"verdict": {"passed": False, "violations": [msg], "checks": [
            {"limit": "ships a candidate", "passed": False, "message": msg}]}}
    return {ship["name"]: ship["gate"]} if isinstance(ship.get("gate"), dict) else {}
