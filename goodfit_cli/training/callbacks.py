"""Training features as callbacks that own their state, as Lightning's do.

A callback is one feature of a training run (an EMA of the weights, early stopping, GoodFit's
cycle statistics, the plateau schedule's watch, tracking, LP-FT's linear probe). The trainer
calls its hooks around the engine's loop and never names its fields; a resumable state holds
every callback's `state_dict()` under the callback's `name`, and a resumed run hands each its
own back through `load_state_dict()`. An arm may bring callbacks of its own.

The protocol (the hooks, `states`, `load_states`) is core/callbacks.py.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from goodfit_cli.core.callbacks import Callback, load_states, states
from goodfit_cli.training.averaging import AnchorEma, CycleStats, at_cycle_end
from goodfit_cli.training.cycles import at_anchor
from goodfit_cli.training.early_stop import EarlyStop, StopRule, flips_of


Evaluate = Callable[[nn.Module], dict[str, Any]]


class Ema(Callback):
    """An EMA of the weights (timm's ModelEmaV3, fed anchor weights only), evaluated beside
    the model at every evaluation (the record's "ema" entry); `module` is the averaged copy."""

    name = "ema"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, decay: float,
                 evaluate: Evaluate) -> None:
        self.model, self.optimizer, self.decay, self.evaluate = model, optimizer, decay, evaluate
        self.ema = AnchorEma(model, decay)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def on_step(self, batch: int) -> None:
        self.ema.update(self.model, self.optimizer)

    def on_evaluate(self, result: dict[str, Any], preds: dict[str, Any] | None) -> None:
        result["ema"] = self.evaluate(self.ema.module)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)


class GoodFitCycles(Callback):
    """GoodFit's conflict rate and projection size over the cycles since the last evaluation
    (the record's "goodfit" entry; nothing for other optimizers)."""

    name = "goodfit_cycles"

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.stats = optimizer, CycleStats()

    def on_step(self, batch: int) -> None:
        self.stats.update(self.optimizer)

    def on_evaluate(self, result: dict[str, Any], preds: dict[str, Any] | None) -> None:
        read = self.stats.read()
        if read:
            result["goodfit"] = read

    def state_dict(self) -> dict[str, Any]:
        return {"cycles": self.stats.cycles, "fired": self.stats.fired,
                "removed": self.stats.removed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.cycles, self.stats.fired, self.stats.removed = (
            int(state["cycles"]), state["fired"], state["removed"])


class PlateauWatch(Callback):
    """Hands the trained task's primary metric to the schedule at each evaluation (only
    `plateau` acts on it). The schedule's own counters are saved with it, under "scheduler"."""

    name = "plateau"

    def __init__(self, schedule: Any, task: str, metric: str) -> None:
        self.schedule, self.task, self.metric = schedule, task, metric

    def on_evaluate(self, result: dict[str, Any], preds: dict[str, Any] | None) -> None:
        val = result.get("val") or {}  # choices are made on validation
        self.schedule.observe(val.get(self.task, {}).get(self.metric))


class EarlyStopping(Callback):
    """Early stopping (training/early_stop.py): watches each record, keeps the best
    evaluation's (anchor) weights, and at the end puts them in the model."""

    name = "early_stop"

    def __init__(self, rule: StopRule, model: nn.Module, optimizer: torch.optim.Optimizer,
                 total: int, log: Callable[[str], None]) -> None:
        self.early, self.model, self.optimizer = EarlyStop(rule), model, optimizer
        self.total, self.log = total, log
        self.wants_predictions = rule.needs_predictions
        self.best: dict[str, torch.Tensor] | None = None  # the best evaluation's weights

    def on_evaluate(self, result: dict[str, Any], preds: dict[str, Any] | None) -> None:
        if self.wants_predictions:  # old-task flip rates against the base's, for the gate
            result["val"]["flips"] = flips_of(self.early.rule, preds)  # on validation

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        kept = self.early.observe(record)
        if self.early.note:
            self.log(self.early.note)
        if kept:
            with at_anchor(self.optimizer):  # keep the weights this evaluation saw
                self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def should_stop(self) -> bool:
        return self.early.stopped

    def on_end(self, model: nn.Module) -> dict[str, Any]:
        if self.early.stopped:
            self.log(f"stopped at batch {self.early.stopped_at}: {self.early.reason}")
        if self.best is not None:  # the arm's checkpoint: its best evaluation's weights
            model.load_state_dict(self.best)
        return {"early_stop": self.early.summary(self.total)}

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.early.state_dict(), "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.early.load_state_dict(state["state"])
        self.best = state["best"]


def step_callbacks(callbacks: list[Callback], optimizer: torch.optim.Optimizer,
                   batch: int) -> None:
    """Each callback's `on_step` after an optimizer step that updated the weights: every step,
    but with GoodFit only its cycle's main step (the model then holds the anchor again)."""
    if at_cycle_end(optimizer):
        for c in callbacks:
            c.on_step(batch)


@contextlib.contextmanager
def end_weights(model: nn.Module, optimizer: torch.optim.Optimizer,
                callbacks: list[Callback]) -> Iterator[None]:
    """Inside: the model holds the weights the run would end with if it ended now: early
    stopping's best evaluation's (EarlyStopping.on_end puts them in the model), else the
    weights at the anchor (training/cycles.py); the model's own weights are back after it."""
    stop = _holding(callbacks)
    if stop is None:
        with at_anchor(optimizer):
            yield
        return
    now = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(stop.best)
    try:
        yield
    finally:
        model.load_state_dict(now)


def end_batch(callbacks: list[Callback]) -> int | None:
    """The batch of the weights `end_weights` holds where they are not the last batch's: early
    stopping's best evaluation's; None otherwise."""
    stop = _holding(callbacks)
    return stop.early.best_batch if stop is not None else None


def _holding(callbacks: list[Callback]) -> EarlyStopping | None:
    """The early stopping among `callbacks` that holds its best evaluation's weights."""
    return next((c for c in callbacks if isinstance(c, EarlyStopping) and c.best is not None),
                None)


__all__ = ["Callback", "Ema", "EarlyStopping", "GoodFitCycles", "PlateauWatch", "end_batch",
           "end_weights", "load_states", "states", "step_callbacks"]
