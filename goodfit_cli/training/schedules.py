"""Learning-rate schedules through timm's factory (`timm.scheduler.create_scheduler_v2`).

A recipe's `scheduler: {name, args}` takes timm's names (cosine, tanh, step, multistep, poly,
wsd, rsqrt, constant, plateau) and timm's arguments (warmup_epochs, warmup_lr, min_lr,
decay_epochs, decay_rate, decay_milestones, cycle_limit, ...), plus `onecycle` (torch's
OneCycleLR: max_lr defaults to the stage's lr, total_steps to the run's). The run's length is
the schedule's length (num_epochs is not an argument).

Units: timm's `*_epochs` arguments count optimizer steps (the engine's batches, like a stage's
`steps`), since each schedule is updated after every step. `plateau` is the exception: it
watches the new task's primary metric, is stepped at each evaluation, and its `*_epochs`
count evaluations. `Schedule` wraps either kind behind `step()` (after every optimizer step),
`observe(value)` (at every evaluation) and a state_dict that resumes exactly. (`plateau` is
torch's ReduceLROnPlateau under timm's argument names: timm's own does not save its counters.)
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.recipe import SchedulerSpec

_SET_BY_RUN = ("optimizer", "num_epochs", "step_on_epochs", "updates_per_epoch", "plateau_mode")


class Schedule:
    """One scheduler behind the engine's `scheduler.step()`, stepped once per optimizer step."""

    def __init__(self, inner: Any, kind: str) -> None:
        self.inner, self.kind = inner, kind  # kind: "timm" | "plateau" | "torch"
        self.updates = 0  # optimizer steps so far
        self.evaluations = 0

    def step(self) -> None:
        self.updates += 1
        if self.kind == "timm":
            self.inner.step_update(self.updates)
        elif self.kind == "torch":
            self.inner.step()

    def observe(self, value: float | None) -> None:
        """An evaluation of the watched metric (only plateau acts on it; a missing or NaN value,
        nothing measured, is skipped: torch's ReduceLROnPlateau would count it as no better)."""
        if self.kind == "plateau" and value is not None and not math.isnan(value):
            self.evaluations += 1
            self.inner.step(value)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "evaluations": self.evaluations,
                "inner": self.inner.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.updates, self.evaluations = int(d["updates"]), int(d["evaluations"])
        self.inner.load_state_dict(d["inner"])


def _check_args(fn: Any, args: dict[str, Any], name: str, set_by_run: tuple[str, ...]) -> None:
    accepted = [k for k in inspect.signature(fn).parameters if k not in set_by_run]
    for k in args:
        if k not in accepted:
            from goodfit_cli.core.registry import suggest

            raise UserError(f"scheduler {name!r} does not take {k!r}{suggest(k, accepted)}")


def build_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer, total_steps: int,
                    mode: str = "max") -> Schedule | None:
    """The stage's schedule over `total_steps` optimizer steps; `mode` is the watched metric's
    direction for plateau ("max": higher is better)."""
    a = dict(spec.args)
    if spec.name == "none":
        if a:
            raise UserError(f"scheduler 'none' takes no args, got {sorted(a)}")
        return None
    if spec.name == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR
        _check_args(sched.__init__, a, "onecycle", ("self", "optimizer", "total_steps",
                                                     "epochs", "steps_per_epoch"))
        a.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])
        try:
            return Schedule(sched(optimizer, total_steps=total_steps, **a), "torch")
        except (TypeError, ValueError) as e:
            raise UserError(f"scheduler 'onecycle': {e}") from None
    if spec.name == "plateau":
        return _plateau(a, optimizer, mode)
    from timm.scheduler import create_scheduler_v2

    _check_args(create_scheduler_v2, a, spec.name, _SET_BY_RUN)
    try:
        inner, _ = create_scheduler_v2(optimizer, sched=spec.name, num_epochs=total_steps,
                                       step_on_epochs=False, updates_per_epoch=1, **a)
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(f"scheduler {spec.name!r}: {e}") from None
    if inner is None:
        raise UserError(f"unknown scheduler {spec.name!r}")
    return Schedule(inner, "timm")


_PLATEAU_ARGS = {"decay_rate": ("factor", 0.1), "patience_epochs": ("patience", 10),
                 "cooldown_epochs": ("cooldown", 0), "min_lr": ("min_lr", 0.0)}


def _plateau(a: dict[str, Any], optimizer: torch.optim.Optimizer, mode: str) -> Schedule:
    """timm's plateau arguments on torch's ReduceLROnPlateau (its state_dict is plain data)."""
    from goodfit_cli.core.registry import suggest

    for k in a:
        if k not in _PLATEAU_ARGS:
            raise UserError(f"scheduler 'plateau' does not take {k!r}"
                            f"{suggest(k, list(_PLATEAU_ARGS))}")
    kw = {torch_name: a.get(k, default) for k, (torch_name, default) in _PLATEAU_ARGS.items()}
    try:
        return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, **kw),
                        "plateau")
    except (TypeError, ValueError) as e:
        raise UserError(f"scheduler 'plateau': {e}") from None
