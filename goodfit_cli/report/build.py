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
from goodfit_cli.objectives import metric as declaration
from goodfit_cli.report.model import RunSide

SCHEMA_ID = "goodfit.report/1"
TASKS = ("old", "new")
KINDS = ("classification", "regression")


def build_report(base: RunSide, arms: list[RunSide], *, kinds: dict[str, str],
                 primary: dict[str, str], provenance: dict, readout: dict | None = None,
                 gate_results: dict[str, dict] | None = None, n_boot: int = 1000,
                 seed: int = 0) -> dict:
    """The report: base metrics, and per arm its metrics, deltas (arm - base) with bootstrap CIs,
    flips and per-class deltas (classification), curves, WiSE-FT points, read-out and gate result.

    kinds/primary: {"old": ..., "new": ...}. readout: {"metric_new", "metric_old", "at": [...]}.
    gate_results: {arm name: evaluate_gate(...) result}; or call gate.apply_gate afterwards.
    """
    for task in TASKS:
        if kinds.get(task) not in KINDS:
            raise ValueError(f"kinds[{task!r}] must be one of {KINDS}, got {kinds.get(task)!r}")
        if not primary.get(task):
            raise ValueError(f"primary[{task!r}] must name the task's primary metric")
    boot = {"n_boot": n_boot, "seed": seed}
    base_metrics = {t: _task_metrics(base, t, kinds[t]) for t in TASKS}
    prov = dict(provenance)
    prov.setdefault("versions", {"goodfit": __version__, "torch": torch.__version__,
                                 "numpy": np.__version__, "python": platform.python_version()})
    prov.setdefault("bootstrap", {"n_boot": n_boot, "seed": seed, "alpha": 0.05,
                                  "method": "paired percentile"})
    report = {
        "schema": SCHEMA_ID,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provenance": prov,
        "tasks": {t: {"kind": kinds[t], "primary": primary[t]} for t in TASKS},
        "base_metrics": base_metrics,
        "arms": [_arm(base, base_metrics, arm, kinds, readout, boot) for arm in arms],
    }
    for entry in report["arms"]:
        entry["gate"] = (gate_results or {}).get(entry["name"])
    return jsonable(report)


def _arm(base: RunSide, base_metrics: dict, arm: RunSide, kinds: dict, readout: dict | None,
         boot: dict) -> dict:
    metrics = {t: _task_metrics(arm, t, kinds[t]) for t in TASKS}
    delta, flips, per_class = {}, {}, {}
    for task in TASKS:
        cis = {}
        b, a = _preds(base, task), _preds(arm, task)
        if "pred" in b and "pred" in a:
            _same_samples(b["target"], a["target"], arm.name, task)
            if kinds[task] == "classification":
                res = M.delta_ci_classification(b["pred"], a["pred"], b["target"], **boot)
                cis["accuracy"] = res["ci"]
                flips[task] = {k: res[k] for k in ("nfr", "pfr", "n_neg", "n_pos", "n",
                                                   "nfr_ci", "pfr_ci")}
                per_class[task] = _per_class(b["pred"], a["pred"], b["target"])
            else:
                res = M.delta_ci_regression(M.per_sample_sq_error(b["pred"], b["target"]),
                                            M.per_sample_sq_error(a["pred"], a["target"]), **boot)
                cis["mse"] = res["ci"]
        for metric in set(b.get("per_sample", {})) & set(a.get("per_sample", {})):
            cis[metric] = M.delta_ci_regression(b["per_sample"][metric],
                                                a["per_sample"][metric], **boot)["ci"]
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
        "curve": list(arm.curve),
        "wise": list(arm.wise) if arm.wise is not None else None,
        "readout": _readout(base_metrics, arm.curve, readout) if readout else None,
        "provenance": dict(arm.provenance),
    }


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
        out[metric] = values.double().mean().item()
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


def _readout(base_metrics: dict, curve: list[dict], spec: dict) -> dict:
    """Old-task metric read off the arm's path (base point + curve) at given new-task values."""
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
