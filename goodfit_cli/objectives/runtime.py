"""A task at run time: its objective on one device, with autocast and batched evaluation."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from goodfit_cli.core.progress import work
from goodfit_cli.data.base import Split, Task
from goodfit_cli.data.batch import rows
from goodfit_cli.objectives import build_objective


class TaskRunner:
    """Loss, predictions and metrics of one task (old or new) on one device; `spec` is the
    recipe's task (loss, metrics, args)."""

    def __init__(self, name: str, spec: Any, task: Task, device: torch.device,
                 precision: str = "fp32", where: str = "") -> None:
        self.name, self.spec, self.device = name, spec, device
        self.objective = build_objective(spec.loss, task, spec.metrics, spec.args,
                                         where=f"{where}{name}_task.loss: ",
                                         args_where=f"{where}{name}_task")
        self.kind = self.objective.kind
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.eval_batch: int | None = None  # a smaller evaluation batch that fits (after an OOM)

    def autocast(self):
        if self.autocast_dtype is None:  # fp32: no context to enter on every batch
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with self.autocast():
            return self.objective.loss(model, x, y).float()

    def outputs(self, model: nn.Module, split: Split, batch_size: int) -> Tensor:
        """The model's outputs on `split`, in inference mode, `batch_size` samples at a time (on
        a GPU that runs out of memory: half as many, and this runner keeps the smaller size)."""
        outs, i, n = [], 0, len(split)
        # progress, where the CLI shows it (a long evaluation only: cli/console.py WorkProgress)
        with torch.inference_mode(), work(f"evaluating the {self.name} task", n) as advance:
            while i < n:
                step = min(batch_size, self.eval_batch or batch_size)
                try:
                    with self.autocast():
                        outs.append(self.objective.outputs(model, rows(split.x, slice(i, i + step)))
                                    .float())
                except torch.cuda.OutOfMemoryError:
                    if self.device.type != "cuda" or step == 1:
                        raise
                    torch.cuda.empty_cache()
                    self.eval_batch = step // 2
                    continue
                i += step
                advance(min(i, n))
            out = torch.cat(outs)
        return out.clone()  # a normal tensor again: the metrics may write into theirs

    def eval_outputs(self, model: nn.Module, split: Split, batch_size: int) -> Tensor:
        """`outputs` in eval mode (the model's mode restored after)."""
        was_training = model.training
        model.train(False)  # eval mode
        try:
            return self.outputs(model, split, batch_size)
        finally:
            model.train(was_training)

    def evaluate(self, model: nn.Module, split: Split,
                 batch_size: int) -> tuple[dict, Tensor, dict[str, Tensor]]:
        """(metrics, predictions, per-sample values) of `model` on `split`, in eval mode."""
        outputs = self.eval_outputs(model, split, batch_size)
        obj = self.objective
        metrics, per_sample = obj.measure(outputs, split.y)
        return metrics, obj.predictions(outputs), per_sample


def check_measured(runner: TaskRunner, metric: str, val: Split, where: str) -> None:
    """Refuse, in one line, a task whose primary metric has nothing to measure on its validation
    split (every value NaN): early stopping, the plateau schedule, the WiSE α and the gate's
    validation margin all decide on it, and a NaN would be neither best nor worst."""
    why = runner.objective.unmeasured(metric, val.y)
    if why:
        from goodfit_cli.core.errors import UserError

        raise UserError(f"{where}{runner.name}_task.metrics[0]: {metric!r} has nothing to "
                        f"measure on the {runner.name} task's validation split ({why}); every "
                        "choice reads it: list first a metric that split measures")
