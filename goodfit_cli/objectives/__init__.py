"""Objectives: how a task trains and is measured, behind a registry named by `task.loss`.

An objective turns a batch into a training loss, a model into evaluation outputs, and outputs into
metrics and per-sample values (the paired bootstrap of the report resamples those). Regression
objectives report lower-is-better errors; classification objectives report accuracy.

Modules: base (the interface and the registry), standard (mse, cross_entropy), gmlc, motion;
runtime (a task's objective on a device: autocast, batched evaluation). A new objective is a
module here that registers itself, imported below.
"""

from __future__ import annotations

from typing import Any

from goodfit_cli.data.base import Task
from goodfit_cli.objectives import gmlc, motion, standard  # noqa: F401  (each registers itself)
from goodfit_cli.objectives.base import OBJECTIVES, Objective


def build_objective(name: str, task: Task, metrics: list[str], args: dict[str, Any],
                    where: str = "") -> Objective:
    cls = OBJECTIVES.get(name, where)
    return cls(task, metrics, **args)


def task_kind(loss: str) -> str:
    """'classification' or 'regression': the one place that decides a task's kind (by its loss)."""
    return OBJECTIVES.get(loss).kind


__all__ = ["OBJECTIVES", "Objective", "build_objective", "task_kind"]
