"""The anti-forgetting arms inside one training run: the loss to train on, and the LP-FT hook.

`anti_forgetting(...)` is the one place that turns an arm of kind l2sp / ewc / lwf / focal /
lp_ft (training/penalties.py) into what the engine sees: a wrapped loss function, and the
arm's training callbacks (LP-FT's linear probe, whose state is the steps taken).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.training.callbacks import Callback
from goodfit_cli.training.penalties import LinearProbeFirst, LossFn, OldTask, Penalty
from goodfit_cli.trainer.session import Session


@dataclass
class Trained:
    """What the engine trains on: the loss, and the arm's training callbacks."""

    loss: LossFn
    callbacks: list[Callback] = field(default_factory=list)


def anti_forgetting(s: Session, arm_kind: str, task: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer, total: int) -> Trained:
    """The arm's loss on `task` (the runner's own for every other arm). Call before resuming:
    the base's anchors, outputs and Fisher are taken from `model`'s current weights."""
    loss = s.runners[task].loss
    spec = s.recipe.finetune.penalty
    if task != "new" or arm_kind not in ("l2sp", "ewc", "lwf", "focal", "lp_ft"):
        return Trained(loss)
    if arm_kind == "lp_ft":
        return Trained(loss, [LinearProbeFirst(model, optimizer, round(spec.lp_fraction * total))])
    old = None
    if arm_kind == "ewc":
        old_train = s.tasks["old"].train
        if len(old_train) == 0:
            raise UserError(f"{s.recipe.source}: arm ewc needs old-task training data; the "
                            "recipe's data has none")
        old = OldTask(s.runners["old"].loss, old_train.x, old_train.y,
                      s.recipe.finetune.batch_size, s.seed)
    try:
        train = s.tasks[task].train
        penalty = Penalty(arm_kind, spec, model, loss, s.runners[task].objective, old,
                          (train.x, train.y))
    except ValueError as e:
        raise UserError(f"{s.recipe.source}: arm {arm_kind}: {e}") from None
    return Trained(penalty)
