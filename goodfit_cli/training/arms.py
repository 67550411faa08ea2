"""Arms: which parameters train and with which optimizer, by name.

An arm is `<opt>` (any timm optimizer name: sgd, adamw, adan, lion, lookahead_adamw, ...;
every parameter), `head_only[:<opt>]` (only the model's head trains; the body is frozen and kept
in eval mode) or `goodfit[:<opt>]` (GoodFit over that main optimizer). Without `:<opt>` the
stage's optimizer (or `goodfit.main`) is used. Optimizers and schedules come from timm's
factories (training/optimizers.py, training/schedules.py).
The anti-forgetting arms `lp_ft`, `l2sp`, `lwf`, `focal` and `ewc` (`<kind>[:<opt>]`) train
every parameter with `<opt>`; what they add lives in training/penalties.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest
from goodfit_cli.models import head_prefixes, set_head_only, unwrap
from goodfit_cli.optim import GoodFit
from goodfit_cli.recipe import StageSpec
from goodfit_cli.recipe.components import unknown_optimizer
from goodfit_cli.training.optimizers import create_main


@dataclass
class Arm:
    name: str
    kind: str  # "plain" | "head_only" | "goodfit" | one of PENALTY_KINDS
    optimizer: str  # the (main) optimizer's name

    @property
    def dirname(self) -> str:
        return arm_dirname(self.name)


def arm_dirname(name: str) -> str:
    """The folder of an arm inside a run ('goodfit:adamw' -> 'goodfit-adamw'): the one rule."""
    return name.replace(":", "-")


PENALTY_KINDS = ("lp_ft", "l2sp", "lwf", "focal", "ewc")  # anti-forgetting (training/penalties.py)
WRAPPING_KINDS = ("head_only", "goodfit", *PENALTY_KINDS)  # <kind>[:<opt>]
# The seed's comparison (SGD, Adam, Lookahead, Adan) and the project's classic names.
BASELINES = ("sgd", "adam", "adamw", "rmsprop", "adan", "lookahead_adamw")


def arm_names() -> list[str]:
    """The arm matrix the tests run (under one and two processes): each baseline optimizer, and
    every wrapping kind over adamw. Any timm optimizer name is accepted too; a new arm kind
    belongs in WRAPPING_KINDS, and so in every test matrix."""
    return [*BASELINES, *(f"{k}:adamw" for k in WRAPPING_KINDS)]


def parse_arm(name: str, stage: StageSpec) -> Arm:
    kind, _, opt = name.partition(":")
    if kind == "goodfit":
        arm = Arm(name, "goodfit", opt or stage.goodfit.main or stage.optimizer.name)
    elif kind == "head_only" or kind in PENALTY_KINDS:
        arm = Arm(name, kind, opt or stage.optimizer.name)
    else:
        arm = Arm(name, "plain", name)
    bad = unknown_optimizer(arm.optimizer)
    if bad:  # e.g. a typo in --optimizer
        if arm.kind == "plain" and suggest(name, list(WRAPPING_KINDS)).startswith(";"):
            bad = suggest(name, list(WRAPPING_KINDS))
        raise UserError(f"unknown arm {name!r}{bad} (an optimizer, or {'/'.join(WRAPPING_KINDS)} "
                        "with an optional :opt; `goodfit optimizers` lists the optimizers)")
    return arm


def build_optimizer(arm: Arm, model: nn.Module, stage: StageSpec,
                    lr: float | None = None) -> torch.optim.Optimizer:
    """The arm's optimizer over the model's trainable parameters (head_only freezes the body)."""
    lr = stage.optimizer.lr if lr is None else lr
    if arm.kind == "head_only":
        set_head_only(model)
    main = create_main(arm.optimizer, stage.optimizer, unwrap(model), lr)
    if arm.kind != "goodfit":
        return main
    gf = stage.goodfit
    return GoodFit(main, n_ref=gf.n_ref, ref_ratio=gf.ref_ratio, projection=gf.projection)


def train_mode(arm: Arm):
    """How to put the model in training mode: head_only keeps the frozen body in eval mode."""
    if arm.kind != "head_only":
        return lambda model: model.train()

    def mode(model: nn.Module) -> None:
        model.train(False)  # eval mode for the frozen body
        inner = unwrap(model)
        prefixes = tuple(p.rstrip(".") for p in head_prefixes(inner))
        for name, module in inner.named_modules():
            if name and name.startswith(prefixes):
                module.train()
    return mode


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
    if main is not opt:
        d.update(goodfit={"n_ref": opt.n_ref, "ref_ratio": opt.ref_ratio,
                          "projection": opt.projection})
    return d
