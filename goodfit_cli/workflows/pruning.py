"""Early pruning of hopeless `goodfit search` trials from their periodic validation results.

Asynchronous successive halving (Li et al., *A System for Massively Parallel Hyperparameter
Tuning*, MLSys 2020; the rule of Optuna's SuccessiveHalvingPruner): a trial reaches rung k at
its first evaluation at or after batch total / eta^(rungs - k), and goes on only if its value
there is among the best 1/eta of the values every trial of the study reached that rung with
(itself included; while fewer than eta have, only a new best goes on). Optuna's own pruners
read `trial.report`, which multi-objective studies do not have, so the values live in each
trial's user attributes (`rungs`: {rung: value}) in the study's storage, shared by every
worker. The study's first `startup` trials are never pruned (they set the rungs' first values
and give the front complete trials to start from).

A trial's value is gate-aware: (minus the number of gate limits its evaluation violates on
validation, its new-task primary metric oriented so higher is better), compared as a pair;
without a gate the first is always 0. The watch is a progress observer of the trial's
fine-tune (trainer/stage.py hands every evaluation record to `Ui.events`): it raises `Pruned`
out of the training loop, and the search ends the trial as pruned; a pruned trial counts
toward `--trials` and its batches toward the study's compute.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from goodfit_cli.report.gate import Gate, evaluate_gate
from goodfit_cli.report.verdict import point_view


class Pruned(Exception):
    """Raised by the watch at the evaluation where a trial is pruned."""

    def __init__(self, batch: int, rung: int, why: str) -> None:
        super().__init__(why)
        self.batch, self.rung = batch, rung


@dataclass(frozen=True)
class Halving:
    """The pruner: `eta` (keep the best 1/eta at each rung), `rungs` (how many rungs before
    the end; 0: no pruning) and `startup` (the study's first trials, never pruned)."""

    eta: int = 3
    rungs: int = 2
    startup: int = 3

    def rung_batches(self, total: int) -> list[int]:
        """The batch each rung starts at, for a trial of `total` batches (ascending)."""
        return [max(1, math.ceil(total / self.eta ** (self.rungs - k))) for k in range(self.rungs)]

    def keeps(self, value: tuple, others: list[tuple]) -> bool:
        """Whether a trial with `value` at a rung goes on, `others` the values other trials
        reached the rung with (higher is better)."""
        ranked = sorted([*others, value], reverse=True)
        return value >= ranked[max(len(ranked) // self.eta - 1, 0)]


def value_of(val: dict[str, Any], base_val: dict[str, Any], gate: Gate | None,
             primary: dict[str, str], new_dir: int) -> tuple[float, float] | None:
    """One evaluation's gate-aware value (see the module's docstring); None when its new-task
    metric is missing or not finite."""
    new = (val.get("new") or {}).get(primary["new"])
    if new is None or not math.isfinite(new):
        return None
    bad = 0
    if gate is not None:
        view = {**point_view({t: val.get(t) or {} for t in ("old", "new")}, base_val),
                "flips": val.get("flips") or {}}
        bad = len(evaluate_gate(gate, {"name": "evaluation", **view})["violations"])
    return (-float(bad), new_dir * float(new))


class PruneWatch:
    """The progress events of one trial's fine-tune (`inner`: the console's, or None): at each
    rung's evaluation, stores the trial's value and raises `Pruned` when the rule drops it."""

    def __init__(self, trial: Any, halving: Halving, trial_dir: Path, gate: Gate | None,
                 primary: dict[str, str], new_dir: int, inner: Any = None) -> None:
        self.trial, self.halving, self.dir, self.gate = trial, halving, trial_dir, gate
        self.primary, self.new_dir, self.inner = primary, new_dir, inner
        self.rungs: list[int] = []
        self.reached: dict[str, list[float]] = {}

    def on_start(self, total_batches: int, done: int) -> None:
        self.rungs = self.halving.rung_batches(total_batches) if self.halving.rungs else []
        if self.inner is not None:
            self.inner.on_start(total_batches, done)

    def on_batch(self, batch: int) -> None:
        if self.inner is not None:
            self.inner.on_batch(batch)

    def on_end(self) -> None:
        if self.inner is not None:
            self.inner.on_end()

    def on_evaluation(self, rec: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.on_evaluation(rec)
        batch = int(rec["batch"])
        self.trial.set_user_attr("batches", batch)  # the trial's training so far (its cost)
        due = [k for k, b in enumerate(self.rungs) if b <= batch and str(k) not in self.reached]
        if not due:
            return
        base = json.loads((self.dir / "base" / "metrics.json").read_text())["val_metrics"]
        value = value_of(rec.get("val") or {}, base, self.gate, self.primary, self.new_dir)
        if value is None:
            return
        for k in due:  # a rung skipped by a coarse eval.every is reached at the next evaluation
            others = [tuple(t.user_attrs["rungs"][str(k)]) for t in
                      self.trial.study.get_trials(deepcopy=False)
                      if t.number != self.trial.number and str(k) in t.user_attrs.get("rungs", {})]
            self.reached[str(k)] = list(value)
            self.trial.set_user_attr("rungs", self.reached)
            if self.trial.number >= self.halving.startup and not self.halving.keeps(value,
                                                                                  others):
                raise Pruned(batch, k, f"pruned at batch {batch} (rung {k}): not among the best "
                                       f"1/{self.halving.eta} of the {len(others) + 1} trials "
                                       "that reached it")


def watching(ui_events: Callable[[str], Any] | None, make: Callable[[Any], PruneWatch]
             ) -> Callable[[str], PruneWatch]:
    """A `Ui.events_for` that wraps each run's events (`ui_events(label)`) in a watch."""
    return lambda label: make(ui_events(label) if ui_events is not None else None)
