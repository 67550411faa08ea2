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

from goodfit_cli.objectives import direction, shown

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
            "message": (f"warning: the base scores old {key} {shown(key, mv)} on validation and "
                        f"{shown(key, mt)} on test, {z:.1f} standard errors apart: it has "
                        "probably trained on the "
                        "validation rows, or they are easier than test; every choice made on "
                        "old-task validation (the gate there, WiSE-FT α, the verdict, a search's "
                        f"feasibility) is then optimistic on test: {fix}")}


def carved_elsewhere(base: dict | None, run: dict) -> dict | None:
    """Whether this run's old-task validation split, carved from training, holds rows the base
    trained on: `base` is the validation record its checkpoint carries (how the run that trained
    it made its splits; None: not a goodfit checkpoint), `run` this run's (`s.validation`). The
    base kept every training row (its `val:` was given), or carved its own with another seed,
    or a smaller share or floor, from a training split of the same size. {"carving" (the
    base's record), "message"} or None (nothing to say, or no way to tell: other data)."""
    b, r = ((v or {}).get("old") or {} for v in (base, run))
    if r.get("source") != "carved" or not isinstance(b.get("train"), int):
        return None
    n = r["train"] + r["val"]  # the training split this run carved from
    if b.get("test") != r["test"]:
        return None  # another data set
    if b.get("source") == "given" and b["train"] == n:
        certain, fix = True, "give the old task the `val:` split the base's run was given"
        then = "from a training split the base trained on whole (its val: was given)"
    elif b.get("source") == "carved" and b["train"] + (b.get("val") or 0) == n:
        certain = b.get("seed") != r.get("seed")
        if not (certain or r["fraction"] > (b.get("fraction") or 0)
                or (r.get("min_per_class") or 0) > (b.get("min_per_class") or 0)):
            return None  # the same draw, no larger: within the rows the base left out
        then = (f"otherwise than the base's run carved its own ({_carving(b)}; this run: "
                f"{_carving(r)})")
        fix = ("carve it as the base's run did (its recipe's seed and data.validation) or give "
               "the old task a `val:` split the base never trained on")
    else:
        return None
    return {"carving": b, "message": (
        f"warning: the old task's validation split is carved {then}, so it "
        f"{'holds' if certain else 'can hold'} rows the base trained on: every choice made on "
        "old-task validation (the gate there, WiSE-FT α, the verdict, a search's "
        f"feasibility) is then optimistic on test: {fix}")}


def _carving(v: dict) -> str:
    """'seed 0, 10 %, at least 2 per class': how a split was carved."""
    return f"seed {v.get('seed')}, {(v.get('fraction') or 0) * 100:g} %" + (
        f", at least {v['min_per_class']} per class" if v.get("min_per_class") else "")
