"""A task at run time: its loss, its predictions and its metrics, on tensors already on the device.

Regression tasks predict a (N, D) float output and report `mse`; classification tasks predict class
ids (N,) and report `accuracy`. Every task also reports `loss` (its training loss on the test split).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from goodfit_cli import metrics as M
from goodfit_cli.data.base import Split, to_model_input
from goodfit_cli.recipe import TaskSpec

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


class TaskRunner:
    """Loss, predictions and metrics of one task (old or new) on one device."""

    def __init__(self, name: str, spec: TaskSpec, kind: str, device: torch.device,
                 precision: str = "fp32") -> None:
        self.name, self.spec, self.kind, self.device = name, spec, kind, device
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def forward(self, model: nn.Module, x: Tensor) -> Tensor:
        with self.autocast():
            return model(to_model_input(x)).float()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out = self.forward(model, x)
        if self.spec.loss == "mse":
            return F.mse_loss(out, y)
        if self.spec.loss == "cross_entropy":
            return F.cross_entropy(out, y)
        raise ValueError(f"task loss {self.spec.loss!r} needs its own runner")

    @torch.no_grad()
    def outputs(self, model: nn.Module, split: Split, batch_size: int) -> Tensor:
        """Raw model outputs on a split: (N, D) regression values or (N, C) logits."""
        outs = [self.forward(model, split.x[i:i + batch_size])
                for i in range(0, len(split), batch_size)]
        return torch.cat(outs)

    def predictions(self, outputs: Tensor) -> Tensor:
        """What flips and per-sample errors are computed from: class ids, or the outputs."""
        return outputs.argmax(1) if self.kind == "classification" else outputs

    def metrics(self, outputs: Tensor, y: Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.spec.metrics:
            if name == "mse":
                out["mse"] = M.mse(outputs, y)
            elif name == "accuracy":
                out["accuracy"] = M.accuracy(outputs.argmax(1), y)
            elif name == "loss":
                loss = F.mse_loss(outputs, y) if self.spec.loss == "mse" else F.cross_entropy(outputs, y)
                out["loss"] = float(loss)
        return out

    def evaluate(self, model: nn.Module, split: Split, batch_size: int) -> tuple[dict, Tensor]:
        """(metrics, predictions) of `model` on `split`, in eval mode; restores the mode after."""
        was_training = model.training
        model.eval()
        try:
            outputs = self.outputs(model, split, batch_size)
        finally:
            model.train(was_training)
        return self.metrics(outputs, split.y), self.predictions(outputs)
