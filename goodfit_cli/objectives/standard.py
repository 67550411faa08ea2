"""The standard objectives: `mse` (regression) and `cross_entropy` (classification)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from goodfit_cli.core import metrics as M
from goodfit_cli.core.metrics import Metric
from goodfit_cli.data.augment import random_crop_flip
from goodfit_cli.data.batch import forward
from goodfit_cli.objectives.base import OBJECTIVES, Objective


class MSE(Objective):
    """Regression with mean squared error: metrics `mse`, `loss`."""

    produces = (Metric("mse", False, description="mean squared error over the outputs"),
                Metric("loss", False, description="the objective's training loss per sample"))

    def loss(self, model, x, y):
        out = forward(model, x).float()
        if out.shape != y.shape:  # F.mse_loss would broadcast (N, k) against (N, 1): wrong, silently
            raise ValueError(f"the model gives {tuple(out.shape[1:])} outputs per sample, the "
                             f"targets are {tuple(y.shape[1:])}")
        return F.mse_loss(out, y)

    def per_sample(self, outputs, y):
        se = M.per_sample_sq_error(outputs.float(), y)  # (N,) mean over output dims
        return {"mse": se, "loss": se}


class CrossEntropy(Objective):
    """Classification with cross-entropy: metrics `accuracy`, `loss`.

    `augment: true`: uint8 images get a random 4-px-padded crop and flip on the device first.
    """

    kind = "classification"
    produces = (Metric("accuracy", True, rate=True, description="share of samples classified right"),
                Metric("loss", False, description="the objective's training loss per sample"))

    def loss(self, model, x, y):
        if self.args.get("augment") and isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            x = random_crop_flip(x, channels_last=True)  # (B, H, W, C) uint8, batched
        return F.cross_entropy(forward(model, x).float(), y)

    def predictions(self, outputs):
        return outputs.argmax(1)

    def per_sample(self, outputs, y):
        return {"accuracy": (outputs.argmax(1) == y).float(),
                "loss": F.cross_entropy(outputs.float(), y, reduction="none")}


OBJECTIVES.register("mse", "regression, mean squared error")(MSE)
OBJECTIVES.register("cross_entropy", "classification, cross-entropy; metric accuracy")(CrossEntropy)
