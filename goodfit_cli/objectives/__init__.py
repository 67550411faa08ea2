"""Objectives: how a task trains and is measured, behind a registry named by `task.loss`.

An objective turns a batch into a training loss, a model into evaluation outputs, and outputs into
metrics and per-sample values (the paired bootstrap of the report resamples those). Regression
objectives report lower-is-better errors; classification objectives report accuracy.

Modules: base (the interface, the registries, the metric declarations), standard (mse,
cross_entropy), gmlc, motion, more_metrics (mae, balanced_accuracy, f1); runtime (a task's objective on a device: autocast, batched evaluation). A new objective is a
module here that registers itself, imported below.
"""

from __future__ import annotations

from typing import Any

from goodfit_cli.data.base import Task
from goodfit_cli.objectives import gmlc, more_metrics, motion, standard  # noqa: F401  (each registers itself)
from goodfit_cli.objectives.base import (
    METRICS,
    OBJECTIVES,
    Objective,
    declared,
    direction,
    is_rate,
    metric,
    produced,
    recomputed,
    shown,
    unit,
    units,
)


def build_objective(name: str, task: Task, metrics: list[str], args: dict[str, Any],
                    where: str = "", args_where: str = "") -> Objective:
    """The task's objective; `where` locates the loss's name, `args_where` the task (its args
    are checked first: `Objective.check_args`)."""
    cls = OBJECTIVES.get(name, where)
    cls.check_args(args, args_where)
    obj = cls(task, metrics, **(args or {}))
    declared = produced(name, where)
    obj.extras = {m: declared[m] for m in metrics if m in declared and declared[m].compute}
    return obj


def task_kind(loss: str) -> str:
    """'classification' or 'regression': the one place that decides a task's kind (by its loss)."""
    return OBJECTIVES.get(loss).kind


__all__ = ["METRICS", "OBJECTIVES", "Objective", "build_objective", "declared", "direction",
           "is_rate", "metric", "produced", "recomputed", "shown", "task_kind", "unit",
           "units"]
