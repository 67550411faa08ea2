"""Arms: which parameters train and with which optimizer, by name.

An arm is `<opt>` (sgd, adamw, adam, rmsprop: every parameter), `head_only[:<opt>]` (only the
model's head trains; the body is frozen and kept in eval mode) or `goodfit[:<opt>]` (GoodFit over
that main optimizer). Without `:<opt>` the stage's optimizer (or `goodfit.main`) is used.
The anti-forgetting arms `lp_ft`, `l2sp`, `lwf`, `focal` and `ewc` (`<kind>[:<opt>]`) train
every parameter with `<opt>`; what they add lives in training/penalties.py.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.registry import suggest
from goodfit_cli.models import head_prefixes, set_head_only, unwrap
from goodfit_cli.optim import GoodFit
from goodfit_cli.recipe import OptimizerSpec, SchedulerSpec, StageSpec

OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
}


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


def arm_names() -> list[str]:
    """Every arm name the registry accepts: each optimizer, and <kind>:<opt> for head_only,
    goodfit and each anti-forgetting kind."""
    opts = sorted(OPTIMIZER_CLASSES)
    return [*opts, *(f"{k}:{o}" for k in ("head_only", "goodfit", *PENALTY_KINDS) for o in opts)]


def parse_arm(name: str, stage: StageSpec) -> Arm:
    kind, _, opt = name.partition(":")
    if kind == "goodfit":
        arm = Arm(name, "goodfit", opt or stage.goodfit.main or stage.optimizer.name)
    elif kind == "head_only" or kind in PENALTY_KINDS:
        arm = Arm(name, kind, opt or stage.optimizer.name)
    else:
        arm = Arm(name, "plain", name)
    if arm.optimizer not in OPTIMIZER_CLASSES:  # e.g. a typo in --optimizer
        names = [*OPTIMIZER_CLASSES, "head_only", "goodfit", *PENALTY_KINDS]
        raise UserError(f"unknown arm {name!r}{suggest(name, names)} (an optimizer, or "
                        f"{'/'.join(names[len(OPTIMIZER_CLASSES):])} with an optional :opt)")
    return arm


def _optimizer(name: str, spec: OptimizerSpec, params: Any, lr: float) -> torch.optim.Optimizer:
    cls = OPTIMIZER_CLASSES[name]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = dict(spec.kwargs) if name == spec.name else {
        k: v for k, v in spec.kwargs.items() if k == "weight_decay" and k in accepted}
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise UserError(f"optimizer {name!r} does not take {unknown[0]!r}")
    return cls(params, lr=lr, **kwargs)


def build_optimizer(arm: Arm, model: nn.Module, stage: StageSpec,
                    lr: float | None = None) -> torch.optim.Optimizer:
    """The arm's optimizer over the model's trainable parameters (head_only freezes the body)."""
    lr = stage.optimizer.lr if lr is None else lr
    if arm.kind == "head_only":
        set_head_only(model)
    params = [p for p in model.parameters() if p.requires_grad]
    main = _optimizer(arm.optimizer, stage.optimizer, params, lr)
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


def build_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer, total_batches: int):
    """A torch.optim.lr_scheduler over the optimizer; stepped once per batch."""
    a = dict(spec.args)
    sched = torch.optim.lr_scheduler
    try:
        if spec.name == "none":
            return None
        if spec.name == "step":
            return sched.StepLR(optimizer, **a)
        if spec.name == "multistep":
            return sched.MultiStepLR(optimizer, **a)
        if spec.name == "exponential":
            return sched.ExponentialLR(optimizer, **a)
        if spec.name == "cosine":
            a.setdefault("T_max", total_batches)
            return sched.CosineAnnealingLR(optimizer, **a)
    except TypeError as e:
        raise UserError(f"scheduler {spec.name!r}: bad args {spec.args}: {e}") from None
    raise UserError(f"unknown scheduler {spec.name!r}")


def stage_for_arm(stage: StageSpec, arm: Arm) -> dict[str, Any]:
    """The per-arm budget: steps / epochs / batch_size / lr after `arm_overrides`."""
    over = stage.arm_overrides.get(arm.name) or stage.arm_overrides.get(arm.kind) or {}
    out = {"steps": stage.steps, "epochs": stage.epochs, "batch_size": stage.batch_size,
           "lr": stage.optimizer.lr}
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
