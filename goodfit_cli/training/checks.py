"""Everything a recipe's stages decide, checked before a run writes anything.

`check_stages(recipe)` builds each arm's optimizer and scheduler as a run does
(`main_optimizer`, `build_scheduler`, `stage_for_arm`), over a two-parameter stand-in model,
and steps the scheduler through the stage's batches (at most STEPS of them): an argument the
optimizer or scheduler rejects (`step_size: 0`, `T_max: 0`, `gamma: abc`, an unknown key) is
one UserError naming the recipe's key, said by `goodfit validate` and by a run before its first
write, instead of an internal error after the base's evaluation.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import nn

from goodfit_cli.core.errors import UserError, loc
from goodfit_cli.recipe import Recipe, StageSpec
from goodfit_cli.training.arms import Arm, main_optimizer, parse_arm, stage_for_arm
from goodfit_cli.training.schedules import build_scheduler

STEPS = 2000  # scheduler steps simulated per arm (cheap: a one-element optimizer)


class _StandIn(nn.Module):
    """The smallest model with a body and a head, for building optimizers."""

    goodfit_head_prefixes = ("head.",)

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(1, 1), nn.Linear(1, 1)


def _numbers_only(args: dict[str, Any], where: str) -> None:
    for k, v in args.items():
        values = v if isinstance(v, (list, tuple)) else [v]
        for x in values:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise UserError(f"{loc(where, str(k))}: expected a finite number, got {v!r}")


def check_arm(stage: StageSpec, arm: Arm, where: str) -> None:
    """Build `arm`'s optimizer and scheduler for `stage` and run the schedule on a stand-in."""
    budget = stage_for_arm(stage, arm)
    total = int(budget.get("steps") or budget.get("epochs") or 1)
    try:
        # the arm's `trainable` is not run: what it changes (LoRA's targets) is the real model's
        optimizer = main_optimizer(arm, _StandIn(), stage, lr=budget["lr"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{loc(where, 'optimizer')}: {e}") from None
    except UserError as e:
        raise UserError(f"{loc(where, 'optimizer')}: {e}") from None
    at = loc(where, "scheduler.args")
    _numbers_only(dict(stage.scheduler.args), at)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            scheduler = build_scheduler(stage.scheduler, optimizer, total)
            for _ in range(min(total, STEPS) if scheduler is not None else 0):
                scheduler.step()
    except UserError as e:
        raise UserError(f"{at}: {e}") from None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        raise UserError(f"{at}: scheduler {stage.scheduler.name!r} rejects "
                        f"{dict(stage.scheduler.args)} ({type(e).__name__}: {e})") from None
    lrs = [g["lr"] for g in optimizer.param_groups]
    if not all(math.isfinite(x) for x in lrs):
        raise UserError(f"{at}: the learning rate becomes {lrs[0]} within {min(total, STEPS)} "
                        "batches")


def check_stages(recipe: Recipe, arms: list[str] | None = None) -> None:
    """Every arm of the fine-tune (`arms`, default the recipe's) and the pretrain, if any."""
    if recipe.pretrain is not None:  # a recipe may fine-tune a base from elsewhere
        check_arm(recipe.pretrain, Arm("pretrain", "plain", recipe.pretrain.optimizer.name),
                  recipe.at("pretrain"))
    seen: dict[str, str] = {}  # folder -> arm: two arms of one folder would train into it
    for name in arms or recipe.finetune.arms:
        arm = parse_arm(name, recipe.finetune)
        if arm.dirname in seen:
            where = "--optimizer" if arms else recipe.at("finetune.arms")
            was = f" (as {seen[arm.dirname]!r})" if seen[arm.dirname] != name else ""
            raise UserError(f"{where}: arm {name!r} is listed twice{was}; give each arm once")
        seen[arm.dirname] = name
        check_arm(recipe.finetune, arm, recipe.at("finetune"))


def check_compiler(device: Any) -> None:
    """`compile: true` on the CPU: torch's inductor builds C++ with the compiler its config names
    (`g++`, or $CXX). Without one it fails inside the first training batch, an internal error;
    here it is one line before the arm trains (the Docker images carry g++; a machine may not)."""
    if getattr(device, "type", device) != "cpu":
        return
    import shutil

    from torch._inductor import config

    cxx = next((c for c in reversed(config.cpp.cxx) if c), "g++")
    if shutil.which(cxx) is None:
        raise UserError(f"compile: true on the CPU needs a C++ compiler for torch.compile "
                        f"({cxx} not found; torch reads $CXX): install one, or set compile: false "
                        "(compile=false on the command line)")
