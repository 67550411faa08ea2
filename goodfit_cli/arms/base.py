"""An arm's declaration: its knobs (typed, with their defaults, checked like `model.args`),
whether it needs old-task data, its search space, and how it builds (which parameters train,
the optimizer it wraps, extra loss terms, training hooks).

One class per arm, registered in ARMS (`goodfit.arms` entry points for plugins). Recipe
validation, `goodfit list arms`, `goodfit search`, docs/method.md's table and the report all
read these declarations; an arm's code is nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from torch import Tensor, nn

from goodfit_cli.core.args import ArgError, check_choice
from goodfit_cli.core.registry import Registry, suggest

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Search:
    """How `goodfit search` draws a knob: in [low, high], or, for a string
    knob, one of `choices`. The study names the parameter by the
    knob's recipe key (arms/search.py `knob_key`), as the trial log, report and recipe do."""

    param: str  # the name older studies used; kept so plugin declarations still load
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()  # a categorical draw (low and high unused)


@dataclass(frozen=True)
class Knob:
    """One argument of an arm: its type and default (defined here once), its bounds, where
    recipes set it before arms had their own args (`legacy`, a path under the stage, e.g.
    "penalty.l2sp"), and how the search draws it."""

    name: str
    type: type  # float, int or str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    choices: tuple[str, ...] = ()
    legacy: str | None = None
    search: Search | None = None
    joins: bool = False  # a str knob of comma-separated names: a YAML list of them reads as one

    def check(self, value: Any) -> Any:
        """The value, converted; ArgError (one line, naming the knob) when it does not fit."""
        key = self.name
        if self.joins and isinstance(value, list) and value and \
                all(isinstance(v, str) and v and "," not in v for v in value):
            value = ",".join(value)  # [query, value] is 'query,value'
        if self.type is str:
            if not isinstance(value, str):
                raise ArgError(key, f"expected a string, got {value!r}")
            return check_choice(key, value, list(self.choices)) if self.choices else value
        if isinstance(value, str) and self.type is float:  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ArgError(key, f"expected an integer, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ArgError(key, f"expected a number, got {value!r}")
        if math.isinf(value):
            raise ArgError(key, f"must be a finite number, got {value}")
        if self.positive and not value > 0:
            raise ArgError(key, f"must be greater than 0, got {value}")
        if self.minimum is not None and value < self.minimum:
            raise ArgError(key, f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ArgError(key, f"must be at most {self.maximum}, got {value}")
        return self.type(value)


@dataclass
class OldTask:
    """What an arm that needs old-task data gets: the old task's loss and training data.
    `loss_key`: what decides the loss besides the model and the rows (the task's objective,
    precision, device), hashed; None: computations on it are never shared (arms/terms.py)."""

    loss: LossFn
    x: Tensor
    y: Tensor
    batch_size: int
    seed: int
    loss_key: str | None = None


@dataclass
class Context:
    """What an arm builds from, for one training run on the new task (before resuming: the
    base's anchors, outputs and Fisher come from `model`'s current weights)."""

    model: nn.Module
    optimizer: Any
    total: int  # the run's batches
    loss: LossFn  # the task's own loss
    objective: Any  # the new task's objective (objectives.Objective)
    new: Callable[[], tuple[Tensor, Tensor]]  # the new task's training split (x, y), on demand
    old: OldTask | None = None  # given when the arm `needs_old`


@dataclass
class Built:
    """What the engine trains on: the loss, and the arm's own training callbacks
    (core/callbacks.py; their states are saved and resumed with the run's)."""

    loss: LossFn
    callbacks: list = field(default_factory=list)


class ArmType:
    """Base of every arm. A subclass sets `name`, `description`, `knobs` (and `needs_old`),
    and overrides what it changes: `trainable`, `train_mode`, `wrap`, `build`, `finish`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    knobs: ClassVar[tuple[Knob, ...]] = ()
    needs_old: ClassVar[bool] = False  # needs the old task's training data
    plain: ClassVar[bool] = False  # written as the optimizer's name, not <name>[:<opt>]

    def __init__(self, **args: Any) -> None:
        known = {k.name: k for k in self.knobs}
        for key in args:
            if key not in known:
                raise ArgError(None, f"unexpected argument {key!r}{suggest(str(key), list(known))}")
        self.args = {k.name: k.check(args[k.name]) if k.name in args else k.default
                     for k in self.knobs}

    @classmethod
    def available(cls) -> bool:
        """Whether the libraries this arm needs are installed (the search draws only those)."""
        return True

    @classmethod
    def arm_name(cls, optimizer: str, goodfit_main: str | None = None) -> str:
        """The arm's name in a recipe for `optimizer` (what the search proposes)."""
        return optimizer if cls.plain else f"{cls.name}:{optimizer}"

    # what trains, and how ------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Before a run writes anything: what the arm needs of this model, checked without
        changing it (ArgError naming the knob; default: nothing)."""

    def trainable(self, model: nn.Module) -> None:
        """Before the optimizer is built: freeze what does not train (default: nothing)."""

    def train_mode(self, model: nn.Module) -> None:
        """Put the model in training mode (default: all of it)."""
        model.train()

    def wrap(self, optimizer: Any) -> Any:
        """The optimizer the run steps, around the arm's main optimizer (default: itself)."""
        return optimizer

    def build(self, ctx: Context) -> Built:
        """The loss the run trains on and its hooks (default: the task's loss, no hook)."""
        return Built(ctx.loss)

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """After training (the weights to ship in place, EMA copies alike), before the model is
        measured and written: make it the model to ship, e.g. merge adapters (LoRA). Returns
        entries for the arm's summary (default: nothing changes, nothing to say)."""
        return {}


ARMS: Registry[type[ArmType]] = Registry("arm", "goodfit.arms")


def register(cls: type[ArmType]) -> type[ArmType]:
    """Class decorator: put an arm in ARMS under its `name`."""
    return ARMS.register(cls.name, cls.description)(cls)
