"""The Objective interface and its registry (named by a recipe's `task.loss`).

An objective turns a batch into a training loss, a model into evaluation outputs, and outputs into
metrics and per-sample values (the paired bootstrap of the report resamples those). Regression
objectives report lower-is-better errors; classification objectives report accuracy.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from goodfit_cli.core.registry import Registry
from goodfit_cli.data.base import Task
from goodfit_cli.data.batch import forward


class Objective:
    """Base: a model mapping inputs to one output tensor."""

    kind = "regression"

    def __init__(self, task: Task, metrics: list[str], **args: Any) -> None:
        self.task, self.metric_names, self.args = task, metrics, args

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def outputs(self, model: nn.Module, x: Tensor) -> Tensor:
        """Evaluation outputs for a batch, (B, ...) (a dict batch reaches the model as keywords)."""
        return forward(model, x)

    def predictions(self, outputs: Tensor) -> Tensor:
        """What flips and per-sample errors come from: the outputs, or class ids."""
        return outputs

    def per_sample(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        """metric → (N,) values whose mean is the metric."""
        raise NotImplementedError

    def metrics(self, outputs: Tensor, y: Tensor) -> dict[str, float]:
        per = self.per_sample(outputs, y)
        return {m: float(per[m].double().mean()) for m in self.metric_names if m in per}


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("loss", "goodfit.objectives")
