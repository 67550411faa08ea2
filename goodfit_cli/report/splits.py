"""Whether the old task's validation split can be trusted to choose on: the base, measured on it
and on the test split, should score about the same on both.

Every choice goodfit makes reads the old task's validation numbers (the gate on validation, each
arm's WiSE-FT α, the search's feasibility, the verdict). A base that trained on its validation
rows (a split carved from the data it was trained on, outside goodfit) scores better there than
on test, and so does every candidate close to it: the choices are then optimistic on test, and
nothing else in a run shows it. `validation_gap` compares the base's per-sample values of the
old task's primary metric (the loss where the predictions lack it) on the two splits, as two
samples of one distribution: the difference of their means over its standard error, from the
pooled values' variance. A gap of GAP_Z or more in the base's favour on validation is reported
(a chance of about 1 in 740 when both splits come from one distribution); validation harder than
test is not (it makes choices cautious, not optimistic).
"""

from __future__ import annotations

import math

import torch

from goodfit_cli.objectives import direction

GAP_Z = 3.0  # standard errors in validation's favour from which the gap is reported
MIN_SAMPLES = 10  # per split: fewer and nothing is said


def validation_gap(test: dict, val: dict, metric: str, carved: bool) -> dict | None:
    """`test`, `val`: the base's predictions on each split ({task: {"per_sample": {name:
    tensor}}}). {"metric", "val", "test", "z", "message"} when the base does better on the old
    task's validation split than on its test split by GAP_Z standard errors or more; None
    otherwise (or when either split lacks per-sample values or has under MIN_SAMPLES).
    `carved`: the validation split was carved from training (the message says what to do)."""
    ps_v = (val.get("old") or {}).get("per_sample") or {}
    ps_t = (test.get("old") or {}).get("per_sample") or {}
    key = next((k for k in (metric, "loss") if k in ps_v and k in ps_t), None)
    if key is None:
        return None
    v, t = (torch.as_tensor(p[key]).double().flatten() for p in (ps_v, ps_t))
    v, t = v[torch.isfinite(v)], t[torch.isfinite(t)]
    if len(v) < MIN_SAMPLES or len(t) < MIN_SAMPLES:
        return None
    sign = -1 if key == "loss" else direction(key)  # +1: higher is better
    se = math.sqrt(float(torch.cat([v, t]).var()) * (1 / len(v) + 1 / len(t)))
    if not se > 0:
        return None
    mv, mt = float(v.mean()), float(t.mean())
    z = sign * (mv - mt) / se
    if z < GAP_Z:
        return None
    fix = ("give the old task a `val:` split the base never trained on, or pretrain the base "
           "with this recipe (its carved rows are left out of training)" if carved else
           "check that the old task's `val:` split holds no row the base trained on")
    return {"metric": key, "val": mv, "test": mt, "z": round(z, 2),
            "message": (f"warning: the base scores old {key} {mv:.4g} on validation and {mt:.4g} "
                        f"on test, {z:.1f} standard errors apart: it has probably trained on the "
                        "validation rows, or they are easier than test; every choice made on "
                        "old-task validation (the gate there, WiSE-FT α, the verdict, a search's "
                        f"feasibility) is then optimistic on test: {fix}")}
