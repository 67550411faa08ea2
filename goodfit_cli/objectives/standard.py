"""The standard objectives: `mse` (regression) and `cross_entropy` (classification).

`cross_entropy`'s `balance` arg (the task's `args.balance`, e.g. `new_task.args.balance`) is
for a long-tailed training split, whatever the arm: every arm trains on the task's loss.
`reweight`: each class weighted by its inverse frequency in the training labels (N / (K n_c)
over the K classes present; a class absent from them weighs 1). `logit_adjust` (Menon et al.,
*Long-tail learning via logit adjustment*, ICLR 2021): the loss reads logits + tau log pi_c, pi
the training labels' class shares (add-one smoothed over the model's outputs), tau
`balance_tau` (default 1); predictions read the logits as they are. Evaluation is never
balanced: the metrics and per-sample losses are the plain ones. The counts are the task's own
training labels; replayed old-task samples in a batch are weighed by them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from goodfit_cli.core import metrics as M
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.core.metrics import Metric
from goodfit_cli.data.augment import random_crop_flip
from goodfit_cli.data.batch import forward
from goodfit_cli.objectives.base import OBJECTIVES, Objective


class MSE(Objective):
    """Regression with mean squared error: metrics `mse`, `loss`."""

    produces = (Metric("mse", False, description="mean squared error over the outputs",
                       nonnegative=True),
                Metric("loss", False, description="the objective's training loss per sample"))

    def __init__(self, task, metrics) -> None:  # no arguments
        super().__init__(task, metrics)

    def loss(self, model, x, y):
        out = forward(model, x).float()
        if out.shape != y.shape:  # F.mse_loss would broadcast (N, k) against (N, 1): wrong, silently
            raise ValueError(f"the model gives {tuple(out.shape[1:])} outputs per sample, the "
                             f"targets are {tuple(y.shape[1:])}")
        return F.mse_loss(out, y)

    def per_sample(self, outputs, y):
        se = M.per_sample_sq_error(outputs.float(), y)  # (N,) mean over output dims
        return {"mse": se, "loss": se}


BALANCE = ("none", "reweight", "logit_adjust")  # cross_entropy's `balance`


class CrossEntropy(Objective):
    """Classification with cross-entropy: metrics `accuracy`, `loss`.

    `augment: true`: uint8 images get a random 4-px-padded crop and flip on the device first.
    `balance`: none (default), reweight or logit_adjust (the module's docstring).
    """

    kind = "classification"
    produces = (Metric("accuracy", True, rate=True, unit="share",
                       description="share of samples classified right"),
                Metric("loss", False, description="the objective's training loss per sample"))

    def __init__(self, task, metrics, balance: str = "none", balance_tau: float = 1.0,
                 augment: bool = False) -> None:
        super().__init__(task, metrics, balance=balance, balance_tau=balance_tau, augment=augment)
        where = f"{task.name}_task" if task is not None else ""
        self._values(balance, balance_tau, where)
        self.balance, self.tau = balance, float(balance_tau)
        labels = getattr(getattr(task, "train", None), "y", None)
        if self.balance != "none" and not isinstance(labels, torch.Tensor):
            raise UserError(f"{loc(where, 'args') if where else 'args'}.balance: needs the "
                            "training labels in memory (a streamed training split has none to "
                            "count)")
        self._labels, self._term = labels, None  # the class weights or logit offsets, once

    @classmethod
    def check_args(cls, args, where):
        super().check_args(args, where)
        args = args or {}
        cls._values(args.get("balance", "none"), args.get("balance_tau", 1.0), where)

    @staticmethod
    def _values(balance, tau, where: str) -> None:
        here = loc(where, "args") if where else "args"
        if balance not in BALANCE:
            raise UserError(f"{here}.balance: expected one of {', '.join(BALANCE)}, got "
                            f"{balance!r}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 0:
            raise UserError(f"{here}.balance_tau: expected a number >= 0, got {tau!r}")

    def _balanced(self, logits, y):
        if self._term is None:
            k = logits.shape[1]
            counts = torch.bincount(self._labels.flatten().long(), minlength=k)[:k].float()
            if self.balance == "reweight":
                present = counts > 0
                inv = counts.sum() / (present.sum() * counts.clamp(min=1))
                self._term = torch.where(present, inv, torch.ones_like(counts))
            else:
                self._term = self.tau * torch.log((counts + 1) / (counts.sum() + k))
            self._term = self._term.to(logits.device)
        if self.balance == "reweight":
            return F.cross_entropy(logits, y, weight=self._term)
        return F.cross_entropy(logits + self._term, y)

    def loss(self, model, x, y):
        if self.args.get("augment") and isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            x = random_crop_flip(x, channels_last=True)  # (B, H, W, C) uint8, batched
        logits = forward(model, x).float()
        if self.balance == "none":
            return F.cross_entropy(logits, y)
        return self._balanced(logits, y)

    def predictions(self, outputs):
        return outputs.argmax(1)

    def per_sample(self, outputs, y):
        return {"accuracy": (outputs.argmax(1) == y).float(),
                "loss": F.cross_entropy(outputs.float(), y, reduction="none")}


OBJECTIVES.register("mse", "regression, mean squared error")(MSE)
OBJECTIVES.register("cross_entropy", "classification, cross-entropy; metric accuracy")(CrossEntropy)
