"""Training features as callbacks that own their state, as Lightning's do.

A callback is one feature of a training run (an EMA of the weights, early stopping, GoodFit's
cycle statistics, the plateau schedule's watch, tracking, LP-FT's linear probe). The trainer
calls its hooks around the engine's loop and never names its fields; a resumable state holds
every callback's `state_dict()` under the callback's `name`, and a resumed run hands each its
own back through `load_state_dict()`. An arm may bring callbacks of its own.

Hooks (all optional; the base class does nothing):

    on_step(batch)                  after each optimizer step (batch: batches done)
    on_evaluate(result, preds)      add entries to an evaluation's result {"old", "new", ...};
                                    `preds` are the evaluation's predictions when any callback
                                    sets `wants_predictions`, else None
    on_record(record, history)      after the evaluation's record is made (history: all so far)
    should_stop()                   True ends the loop early, its state saved
    on_end(model)                   after the loop: entries for the run's summary.json
    state_dict() / load_state_dict(state)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from goodfit_cli.training.averaging import AnchorEma, CycleStats
from goodfit_cli.training.cycles import at_anchor
from goodfit_cli.training.early_stop import EarlyStop, StopRule, flips_of


class Callback:
    """One training feature; override the hooks it needs (see the module's docstring)."""

    name = "callback"  # its key in a resumable state: unique within a run
    wants_predictions = False  # on_evaluate needs the evaluation's per-sample predictions

    def on_step(self, batch: int) -> None:
        pass

    def on_evaluate(self, result: dict[str, Any], preds: dict[str, Any] | None) -> None:
        pass

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def on_end(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def states(callbacks: Iterable[Callback]) -> dict[str, dict[str, Any]]:
    """{name: state} of every callback, for a resumable state."""
    return {c.name: c.state_dict() for c in callbacks}


def load_states(callbacks: Iterable[Callback], saved: dict[str, dict[str, Any]]) -> None:
    """Hand each callback its saved state; one the state does not hold starts afresh."""
    for c in callbacks:
        if c.name in saved:
            c.load_state_dict(saved[c.name])


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
        self.schedule.observe(result.get(self.task, {}).get(self.metric))


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
        if self.wants_predictions:  # old-task flip rates against the base, for the gate
            result["flips"] = flips_of(self.early.rule, preds)

    def on_record(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if self.early.observe(record):
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
