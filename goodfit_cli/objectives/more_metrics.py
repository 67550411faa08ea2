"""Metrics beyond what each objective's `per_sample` gives, computed only when a recipe asks.

Each is a `core.metrics.Metric` with a `compute(predictions, targets)` function, registered in
METRICS with the objectives or task kinds it `applies_to`. `mae` is a per-sample mean (the
report gives its delta a paired bootstrap CI); `balanced_accuracy` and `f1` (macro) are not,
so the report shows their deltas without a CI and says why.
"""

from __future__ import annotations

import torch
from torch import Tensor

from goodfit_cli.core.metrics import Metric
from goodfit_cli.objectives.base import METRICS


def _abs_error(pred: Tensor, y: Tensor) -> Tensor:
    """(N,) mean absolute error of each sample over its outputs."""
    return (pred.double() - y.double()).abs().reshape(len(y), -1).mean(dim=1)


def _per_class(pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(true positives, predicted count, true count) per class present in y or pred."""
    pred, y = pred.reshape(-1).long(), y.reshape(-1).long()
    n = int(torch.maximum(pred.max(), y.max())) + 1
    tp = torch.bincount(y[pred == y], minlength=n).double()
    return tp, torch.bincount(pred, minlength=n).double(), torch.bincount(y, minlength=n).double()


def _balanced_accuracy(pred: Tensor, y: Tensor) -> Tensor:
    """Mean over the classes in y of each class's recall."""
    tp, _, true = _per_class(pred, y)
    present = true > 0
    return (tp[present] / true[present]).mean()


def _macro_f1(pred: Tensor, y: Tensor) -> Tensor:
    """Mean over the classes in y or pred of 2·tp / (predicted + true)."""
    tp, predicted, true = _per_class(pred, y)
    seen = (predicted + true) > 0
    return (2 * tp[seen] / (predicted[seen] + true[seen])).mean()


METRICS.register("mae", "mean absolute error (regression with mse)")(
    Metric("mae", False, description="mean absolute error", nonnegative=True, compute=_abs_error,
           applies_to=("mse",)))
METRICS.register("balanced_accuracy", "mean per-class recall (classification; no CI)")(
    Metric("balanced_accuracy", True, per_sample_mean=False, rate=True, unit="share",
           description="mean per-class recall", compute=_balanced_accuracy,
           applies_to=("classification",)))
METRICS.register("f1", "macro F1 (classification; no CI)")(
    Metric("f1", True, per_sample_mean=False, rate=True, unit="share", description="macro F1",
           compute=_macro_f1, applies_to=("classification",)))
