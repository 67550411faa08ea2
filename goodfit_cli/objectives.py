"""Objectives: how a task trains and is measured, behind a registry named by `task.loss`.

An objective turns a batch into a training loss, a model into evaluation outputs, and outputs into
metrics and per-sample values (the paired bootstrap of the report resamples those). Regression
objectives report lower-is-better errors; classification objectives report accuracy.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from goodfit_cli import metrics as M
from goodfit_cli.data.augment import random_crop_flip
from goodfit_cli.data.base import Task, to_model_input
from goodfit_cli.registry import Registry


class Objective:
    """Base: a model mapping inputs to one output tensor."""

    kind = "regression"

    def __init__(self, task: Task, metrics: list[str], **args: Any) -> None:
        self.task, self.metric_names, self.args = task, metrics, args

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def outputs(self, model: nn.Module, x: Tensor) -> Tensor:
        """Evaluation outputs for a batch, (B, ...)."""
        return model(to_model_input(x))

    def predictions(self, outputs: Tensor) -> Tensor:
        """What flips and per-sample errors come from: the outputs, or class ids."""
        return outputs

    def per_sample(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        """metric → (N,) values whose mean is the metric."""
        raise NotImplementedError

    def metrics(self, outputs: Tensor, y: Tensor) -> dict[str, float]:
        per = self.per_sample(outputs, y)
        return {m: float(per[m].double().mean()) for m in self.metric_names if m in per}


class MSE(Objective):
    """Regression with mean squared error: metrics `mse`, `loss`."""

    def loss(self, model, x, y):
        return F.mse_loss(model(to_model_input(x)).float(), y)

    def per_sample(self, outputs, y):
        se = M.per_sample_sq_error(outputs.float(), y)  # (N,) mean over output dims
        return {"mse": se, "loss": se}


class CrossEntropy(Objective):
    """Classification with cross-entropy: metrics `accuracy`, `loss`.

    `augment: true`: uint8 images get a random 4-px-padded crop and flip on the device first.
    """

    kind = "classification"

    def loss(self, model, x, y):
        if self.args.get("augment") and x.dtype == torch.uint8:
            x = random_crop_flip(x, channels_last=True)  # (B, H, W, C) uint8, batched
        return F.cross_entropy(model(to_model_input(x)).float(), y)

    def predictions(self, outputs):
        return outputs.argmax(1)

    def per_sample(self, outputs, y):
        return {"accuracy": (outputs.argmax(1) == y).float(),
                "loss": F.cross_entropy(outputs.float(), y, reduction="none")}


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("loss")
OBJECTIVES.register("mse", "regression, mean squared error")(MSE)
OBJECTIVES.register("cross_entropy", "classification, cross-entropy; metric accuracy")(CrossEntropy)


import goodfit_cli.gmlc  # noqa: E402,F401  registers "gmlc" (it subclasses CrossEntropy)
import goodfit_cli.motion_objective  # noqa: E402,F401  registers "motion"


def build_objective(name: str, task: Task, metrics: list[str], args: dict[str, Any],
                    where: str = "") -> Objective:
    cls = OBJECTIVES.get(name, where)
    return cls(task, metrics, **args)
