"""Base + arms (RunSide) → the JSON-ready report dict (schema goodfit.report/1)."""

from __future__ import annotations

import math
import platform
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

from goodfit_cli import __version__
from goodfit_cli.core import metrics as M
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.objectives import is_rate, units
from goodfit_cli.objectives import metric as declaration
from goodfit_cli.report.model import RunSide

SCHEMA_ID = "goodfit.report/1"
TASKS = ("old", "new")
KINDS = ("classification", "regression")


def build_report(base: RunSide, arms: list[RunSide], *, kinds: dict[str, str],
                 primary: dict[str, str], provenance: dict, readout: dict | None = None,
                 gate_results: dict[str, dict] | None = None, n_boot: int = 1000,
                 seed: int = 0, sample_ids: dict[str, list[str] | None] | None = None,
                 losses: dict[str, str] | None = None) -> dict:
    """The report: base metrics, and per arm its metrics, deltas (arm - base) with bootstrap CIs,
    flips and per-class deltas (classification), curves, WiSE-FT points, read-out and gate result.

    kinds/primary: {"old": ..., "new": ...}. readout: {"metric_new", "metric_old", "at": [...]}.
    gate_results: {arm name: evaluate_gate(...) result}; or call gate.apply_gate afterwards.
    sample_ids: {task: a name per test sample (file path, table row)} for the flipped examples.
    losses: {task: its objective}: each task's "units" (metadata: how its metrics read) come
    from that objective's declarations.
    """
    for task in TASKS:
        if kinds.get(task) not in KINDS:
            raise ValueError(f"kinds[{task!r}] must be one of {KINDS}, got {kinds.get(task)!r}")
        if not primary.get(task):
            raise ValueError(f"primary[{task!r}] must name the task's primary metric")
    boot = {"n_boot": n_boot, "seed": seed, "draws": {}}  # one index matrix per sample count
    shared = _classes_seen(base, arms, kinds)  # one label set per task for its matrices
    base_metrics = {t: _task_metrics(base, t, kinds[t]) for t in TASKS}
    prov = dict(provenance)
    masked = _masked_losses(base_metrics["new"], prov)
    prov.setdefault(KEY, source_sha256())  # the code that made it (core/source.py), any command
    prov.setdefault("versions", {"goodfit": __version__, "torch": torch.__version__,
                                 "numpy": np.__version__, "python": platform.python_version()})
    prov.setdefault("bootstrap", {"n_boot": n_boot, "seed": seed, "alpha": 0.05,
                                  "method": "paired percentile"})
    report = {
        "schema": SCHEMA_ID,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provenance": prov,
        "tasks": {t: {"kind": kinds[t], "primary": primary[t],
                      "units": units((losses or {}).get(t),
                                     [*base_metrics[t], *(f.name for f in M.FLIPS)])}
                  for t in TASKS},
        "base_metrics": base_metrics,
        "base_masked": masked,
        "base_confusion": {t: confusion(_preds(base, t), shared.get(t)) for t in TASKS
                           if kinds[t] == "classification" and "pred" in _preds(base, t)},
        "arms": [_arm(base, base_metrics, arm, kinds, readout, boot, sample_ids or {}, shared)
                 for arm in arms],
    }
    val_base = _on_val(base)
    if val_base is not None:  # every choice is made on these; the numbers above are test's
        report["base_val_metrics"] = {t: _task_metrics(val_base, t, kinds[t]) for t in TASKS}
        _masked_losses(report["base_val_metrics"]["new"], prov)  # n/a on validation too
    for entry, arm in zip(report["arms"], arms):  # the read-out: along the curve's own split
        split = entry["curve_split"]
        at_base = report.get("base_val_metrics") if split == "val" else base_metrics
        entry["readout"] = ({**_readout(at_base, curve_points(arm.curve), readout),
                             "split": split} if readout and at_base else None)
    splits = {e["curve_split"] for e in report["arms"] if e["curve"]}
    report["curves_split"] = splits.pop() if len(splits) == 1 else (
        "mixed" if splits else None)
    if val_base is not None:
        for entry, arm in zip(report["arms"], arms):
            val_arm = _on_val(arm)
            if val_arm is not None:
                view = _arm(val_base, report["base_val_metrics"], val_arm, kinds, None, boot, {})
                entry["validation"] = {k: view[k] for k in ("metrics", "delta", "flips")}
    for entry in report["arms"]:
        entry["gate"] = (gate_results or {}).get(entry["name"])
    return jsonable(report)


def _masked_losses(new: dict[str, float], prov: dict) -> list[str]:
    """A base measured with its own head on a task that adds classes cannot predict the new
    classes: its new-task accuracy (0) is a fact, its losses (logits of -1e4) are not a number
    to compare with. They become None (shown as n/a) and are listed."""
    if (prov.get("base_head") or {}).get("measured") != "exact":
        return []
    masked = sorted(m for m in new if not is_rate(m))
    for m in masked:
        new[m] = None
    return masked


def _on_val(side: RunSide) -> RunSide | None:
    """The side as measured on the validation splits (None when it was not)."""
    if not side.val_metrics:
        return None
    return RunSide(side.name, side.checkpoint, side.val_metrics, side.val_predictions)


def _classes_seen(base: RunSide, arms: list[RunSide], kinds: dict) -> dict[str, list[int]]:
    """Each classification task's classes seen as a target or a prediction by the base or any
    arm: the rows and columns every confusion matrix of that task shows."""
    out = {}
    for t in TASKS:
        if kinds[t] != "classification":
            continue
        parts = [p[k].long().cpu().flatten() for side in [base, *arms]
                 for p in [_preds(side, t)] if "pred" in p for k in ("target", "pred")]
        if parts:
            out[t] = torch.unique(torch.cat(parts)).tolist()
    return out


def _arm(base: RunSide, base_metrics: dict, arm: RunSide, kinds: dict, readout: dict | None,
         boot: dict, sample_ids: dict[str, list[str] | None],
         shared: dict[str, list[int]] | None = None) -> dict:
    metrics = {t: _task_metrics(arm, t, kinds[t]) for t in TASKS}
    delta, flips, per_class, confusions, flipped = {}, {}, {}, {}, {}
    for task in TASKS:
        b, a = _preds(base, task), _preds(arm, task)
        if "pred" in b and "pred" in a:
            _same_samples(b["target"], a["target"], arm.name, task)
        cis, task_flips = paired_cis(b, a, kinds[task], boot)
        if task_flips is not None:
            flips[task] = task_flips
            per_class[task] = _per_class(b["pred"], a["pred"], b["target"])
            confusions[task] = confusion(a, (shared or {}).get(task))
            flipped[task] = flipped_examples(b["pred"], a["pred"], b["target"],
                                             sample_ids.get(task))
        delta[task] = {}
        for metric, value in metrics[task].items():
            ref = base_metrics[task].get(metric)
            if not _finite(value) or not _finite(ref):
                continue
            d = value - ref
            declared = declaration(metric)
            better = d * declared.direction > 0 if declared is not None else None
            delta[task][metric] = {"value": d, "ci": cis.get(metric), "better": better}
            if declared is not None and not declared.per_sample_mean:
                delta[task][metric]["no_ci"] = "not a per-sample mean"
    return {
        "name": arm.name,
        "checkpoint": str(arm.checkpoint),
        "metrics": metrics,
        "delta": delta,
        "flips": flips,
        "per_class": per_class,
        "confusion": confusions,
        "flipped": flipped,
        "curve": list(arm.curve),
        "curve_split": curve_split(arm.curve),
        "wise": list(arm.wise) if arm.wise is not None else None,
        "provenance": dict(arm.provenance),
    }


def paired_cis(b: dict, a: dict, kind: str, boot: dict) -> tuple[dict, dict | None]:
    """The paired bootstrap CIs of the changes from `b` to `a` (one task's predictions of the
    base and of a candidate, on the same samples): ({metric: [lo, hi]}, the flips with their
    CIs for a classification task, else None). `boot`: n_boot, seed, draws (build_report's)."""
    cis, flips = {}, None
    both_per_sample = sorted(set(b.get("per_sample", {})) & set(a.get("per_sample", {})))
    if "pred" in b and "pred" in a:
        if kind == "classification":
            res = M.delta_ci_classification(b["pred"], a["pred"], b["target"], **boot)
            cis["accuracy"] = res["ci"]
            flips = {k: res[k] for k in ("nfr", "pfr", "n_neg", "n_pos", "n", "nfr_ci", "pfr_ci")}
        elif "mse" not in both_per_sample:  # else its per-sample values give its CI below
            cis["mse"] = M.delta_ci_regression(M.per_sample_sq_error(b["pred"], b["target"]),
                                               M.per_sample_sq_error(a["pred"], a["target"]),
                                               **boot)["ci"]
    for metric in both_per_sample:
        cis[metric] = M.delta_ci_regression(b["per_sample"][metric], a["per_sample"][metric],
                                            _partial(metric), **boot)["ci"]
    return cis, flips


def _partial(metric: str) -> bool:
    """Whether `metric`'s NaN per-sample values are samples with nothing to measure."""
    declared = declaration(metric)
    return declared is not None and declared.partial


def _preds(side: RunSide, task: str) -> dict:
    return (side.predictions or {}).get(task) or {}


def _task_metrics(side: RunSide, task: str, kind: str) -> dict[str, float]:
    """The side's metrics for a task; missing ones are computed from its predictions."""
    p, out = _preds(side, task), {}
    if "pred" in p:
        if kind == "classification":
            out["accuracy"] = M.accuracy(p["pred"], p["target"])
        else:
            out["mse"] = M.mse(p["pred"], p["target"])
    for metric, values in p.get("per_sample", {}).items():
        out[metric] = M.sample_mean(values, _partial(metric))
    out.update({k: _number(v) for k, v in (side.metrics.get(task) or {}).items()})
    return out


def _number(v: Any) -> float | None:
    """A metric value as a float (tensors and numpy scalars included); None if it is not one."""
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError):
        return None


def _same_samples(base_target: torch.Tensor, arm_target: torch.Tensor, arm: str, task: str) -> None:
    if base_target.shape != arm_target.shape or not torch.equal(base_target, arm_target):
        raise ValueError(f"arm {arm!r} was evaluated on other {task}-task samples than the base "
                         f"(targets differ); flips and paired CIs need the same samples in order")


def _per_class(base_pred: torch.Tensor, arm_pred: torch.Tensor, target: torch.Tensor) -> list:
    """Per-class accuracy of base and arm, worst regression first."""
    b, a = M.per_class_accuracy(base_pred, target), M.per_class_accuracy(arm_pred, target)
    rows = [{"class": c, "base": b[c][0], "arm": a[c][0], "delta": a[c][0] - b[c][0],
             "count": b[c][1]} for c in b]
    return sorted(rows, key=lambda r: (r["delta"], -r["count"], r["class"]))


MAX_FLIPPED = 100  # examples listed per task and direction (the counts are complete)


def confusion(preds: dict, classes: list[int] | None = None) -> dict[str, Any]:
    """{"labels": classes seen as target or prediction (with `classes`, those too: the same
    rows and columns for every matrix of one task), "matrix": counts[target][predicted]}."""
    target, pred = preds["target"].long().cpu(), preds["pred"].long().cpu()
    seen = [target, pred] + ([torch.tensor(classes, dtype=torch.long)] if classes else [])
    labels = torch.unique(torch.cat(seen))  # sorted
    k = len(labels)
    cell = torch.searchsorted(labels, target) * k + torch.searchsorted(labels, pred)
    matrix = torch.bincount(cell, minlength=k * k).view(k, k)
    return {"labels": labels.tolist(), "matrix": matrix.tolist()}


def flipped_examples(base_pred: torch.Tensor, arm_pred: torch.Tensor, target: torch.Tensor,
                     ids: list[str] | None) -> dict[str, Any]:
    """The samples the arm broke (negative flips: the base right, the arm wrong) and fixed
    (positive), by test-split index, with their file path or table row where the data has one."""
    b, a, t = base_pred.cpu(), arm_pred.cpu(), target.cpu()
    out: dict[str, Any] = {}
    for kind, mask in (("negative", (b == t) & (a != t)), ("positive", (b != t) & (a == t))):
        where = torch.nonzero(mask).flatten().tolist()
        out[f"n_{kind}"] = len(where)
        out[kind] = [{"index": i, "id": ids[i] if ids is not None and i < len(ids) else None,
                      "target": int(t[i]), "base": int(b[i]), "arm": int(a[i])}
                     for i in where[:MAX_FLIPPED]]
    return out


def curve_split(curve: list[dict]) -> str:
    """The split an arm's training curve is drawn on: "test" when its records measured the
    test splits ("old", "new": eval.curves test+val, or a run made before periodic
    evaluations moved to validation), else "val" (the default: periodic evaluations measure
    the validation splits only)."""
    return "test" if any("old" in r or "new" in r for r in curve) else "val"


def curve_points(curve: list[dict]) -> list[dict]:
    """The curve's records as {"batch", "old", "new"} on its split (curve_split)."""
    on_val = curve_split(curve) == "val"
    return [{"batch": r.get("batch", i), "old": ((r.get("val") if on_val else r) or {}).get("old"),
             "new": ((r.get("val") if on_val else r) or {}).get("new")}
            for i, r in enumerate(curve)]


def _readout(base_metrics: dict, curve: list[dict], spec: dict) -> dict:
    """Old-task metric read off the arm's path (base point + curve, on one split) at given
    new-task values."""
    mn, mo = spec["metric_new"], spec["metric_old"]
    points = [(base_metrics["new"].get(mn), base_metrics["old"].get(mo))]
    points += [((r.get("new") or {}).get(mn), (r.get("old") or {}).get(mo)) for r in curve]
    points = [(x, y) for x, y in points if _finite(x) and _finite(y)]
    at = [float(v) for v in spec["at"]]
    read = M.fit_tradeoff_curve([x for x, _ in points], [y for _, y in points], at,
                                degree=spec.get("degree", 2))
    return {"metric_new": mn, "metric_old": mo, "points": len(points),
            "values": [{"new": v, "old": read[v]} for v in at]}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def jsonable(obj: Any) -> Any:
    """A copy that json.dumps(allow_nan=False) accepts: tensors → lists, NaN/inf → None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    return str(obj)
