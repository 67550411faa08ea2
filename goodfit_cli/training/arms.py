"""Arms in a run: a name from the recipe -> the registered arm (goodfit_cli/arms) with its
args, its optimizer, its training mode and what it trains on.

An arm is `<opt>` (the plain arm: any timm optimizer name, every parameter) or
`<name>[:<opt>]` for a registered arm (head_only, goodfit, lp_ft, l2sp, lwf, focal, ewc, lora, and
plugins'); without `:<opt>` the stage's optimizer (or `goodfit.main`) is used. Optimizers and
schedules come from timm's factories (training/optimizers.py, training/schedules.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from goodfit_cli import arms as registry
from goodfit_cli.arms import ARMS, ArmType, Built, Context, OldTask
from goodfit_cli.core.args import ArgError
from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.core.registry import suggest
from goodfit_cli.models import unwrap
from goodfit_cli.recipe import StageSpec
from goodfit_cli.recipe.components import unknown_optimizer
from goodfit_cli.training.optimizers import create_main


@dataclass
class Arm:
    name: str
    kind: str  # a registered arm's name ("plain" for an optimizer's own name)
    optimizer: str  # the (main) optimizer's name

    @property
    def dirname(self) -> str:
        return arm_dirname(self.name)


def arm_dirname(name: str) -> str:
    """The folder of an arm inside a run ('goodfit:adamw' -> 'goodfit-adamw'): the one rule."""
    return name.replace(":", "-")


# The seed's comparison (SGD, Adam, Lookahead, Adan) and the project's classic names.
BASELINES = ("sgd", "adam", "adamw", "rmsprop", "adan", "lookahead_adamw")


def arm_names() -> list[str]:
    """The arm matrix the tests run (under one and two processes): each baseline optimizer, and
    every built-in registered arm over adamw (a new arm is in every test matrix)."""
    return [*BASELINES, *(f"{k}:adamw" for k in registry.BUILTIN if not ARMS.get(k).plain)]


def parse_arm(name: str, stage: StageSpec) -> Arm:
    kind, opt = registry.split(name)
    if kind == "goodfit":
        arm = Arm(name, kind, opt or stage.goodfit.main or stage.optimizer.name)
    else:
        arm = Arm(name, kind, opt or stage.optimizer.name)
    bad = unknown_optimizer(arm.optimizer)
    if bad:  # e.g. a typo in --optimizer
        wrapping = registry.wrapping()
        if arm.kind == "plain" and suggest(name, wrapping).startswith(";"):
            bad = suggest(name, wrapping)
        raise UserError(f"unknown arm {name!r}{bad} (an optimizer, or {'/'.join(wrapping)} "
                        "with an optional :opt; `goodfit optimizers` lists the optimizers)")
    arm_type(arm, stage)  # its args fit its knobs
    return arm


def arm_type(arm: Arm, stage: StageSpec, where: str = "") -> ArmType:
    """The registered arm with its args: the arm's defaults, then the stage's args for its
    kind, then for its exact name."""
    args = {**stage.arm_args.get(arm.kind, {}), **stage.arm_args.get(arm.name, {})}
    try:
        return ARMS.get(arm.kind, where)(**args)
    except ArgError as e:
        raise UserError(f"{loc(where or 'finetune', f'arm_args.{arm.name}')}: {e}") from None


def _args_key(arm: Arm, stage: StageSpec, key: str | None) -> str:
    """Where an arm's arg was set: finetune.arm_args.<exact name> or .<kind> (its default)."""
    named = key is not None and key in stage.arm_args.get(arm.name, {})
    return loc("finetune", f"arm_args.{arm.name if named else arm.kind}")


def check_arms_on(arms: list[Arm], stage: StageSpec, model: nn.Module) -> None:
    """Each arm's needs of the real model (LoRA's targets), before a run writes anything."""
    for arm in arms:
        try:
            arm_type(arm, stage).check_model(model)
        except ArgError as e:
            raise UserError(f"{_args_key(arm, stage, e.key)}.{e}") from None


def build_optimizer(arm: Arm, model: nn.Module, stage: StageSpec,
                    lr: float | None = None) -> torch.optim.Optimizer:
    """The arm's optimizer over the model's trainable parameters (the arm decides which, and
    may change the model first: LoRA puts its adapters in)."""
    try:
        arm_type(arm, stage).trainable(model)
    except ArgError as e:  # e.g. LoRA's targets name no layer of this model
        raise UserError(f"{_args_key(arm, stage, e.key)}.{e}") from None
    return main_optimizer(arm, model, stage, lr)


def main_optimizer(arm: Arm, model: nn.Module, stage: StageSpec,
                   lr: float | None = None) -> torch.optim.Optimizer:
    """The arm's optimizer over the parameters of `model` that train now, as they are."""
    lr = stage.optimizer.lr if lr is None else lr
    return arm_type(arm, stage).wrap(create_main(arm.optimizer, stage.optimizer, unwrap(model),
                                                 lr))


def finish_arm(arm: Arm, stage: StageSpec, *models: nn.Module) -> dict[str, Any]:
    """After training: each of `models` (the arm's, its EMA copy) made the model to ship (LoRA
    merges its adapters); the arm's entries for its summary."""
    kind, said = arm_type(arm, stage), {}
    for m in models:
        said = kind.finish(m) or said  # the arm's own model says last
    return said


def train_mode(arm: Arm, stage: StageSpec | None = None) -> Callable[[nn.Module], None]:
    """How to put the model in training mode (head_only keeps the frozen body in eval mode)."""
    return ARMS.get(arm.kind)().train_mode if stage is None else arm_type(arm, stage).train_mode


def arm_training(arm: Arm, stage: StageSpec, task: str, ctx: Context,
                 old: Callable[[], OldTask | None], where: str) -> Built:
    """What the run of `arm` on `task` trains on: the arm's loss and hooks on the new task,
    the task's own loss otherwise. `old()` gives the old task's training data (asked only
    when the arm needs it). Call before resuming: anchors come from the model's weights."""
    if task != "new":
        return Built(ctx.loss)
    kind = arm_type(arm, stage)
    if kind.needs_old:
        ctx.old = old()
        if ctx.old is None:
            raise UserError(f"{where}: arm {arm.kind} needs old-task training data; the "
                            "recipe's data has none")
    try:
        return kind.build(ctx)
    except ValueError as e:
        raise UserError(f"{where}: arm {arm.kind}: {e}") from None


def stage_for_arm(stage: StageSpec, arm: Arm) -> dict[str, Any]:
    """The per-arm budget: steps / epochs / batch_size / lr after `arm_overrides`."""
    over = stage.arm_overrides.get(arm.name) or stage.arm_overrides.get(arm.kind) or {}
    out = {"steps": stage.steps, "epochs": stage.epochs, "batch_size": stage.batch_size,
           "lr": stage.optimizer.lr, "ema": over.get("ema", stage.ema)}
    if "steps" in over or "epochs" in over:
        out["steps"], out["epochs"] = over.get("steps"), over.get("epochs")
    for k in ("batch_size", "lr"):
        if k in over:
            out[k] = over[k]
    return out


def describe_optimizer(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """What a report and a checkpoint's metadata say about the optimizer that ran."""
    main = getattr(opt, "main", opt)
    d = {"class": type(main).__name__, "lr": main.defaults.get("lr")}
    for impl in ("fused", "foreach"):  # torch's kernels: the same rule, different rounding
        if main.defaults.get(impl):
            d["implementation"] = impl
            break
    if main is not opt:
        d.update(goodfit={"n_ref": opt.n_ref, "ref_ratio": opt.ref_ratio,
                          "projection": opt.projection})
    return d
