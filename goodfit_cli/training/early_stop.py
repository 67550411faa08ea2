"""Early stopping of one fine-tuning arm, decided at its evaluations (`finetune.early_stop`).

An arm stops when the NEW task's primary metric has not improved by more than `min_delta` (in
the metric's good direction) for `patience` evaluations in a row, or, with `gate: true`, as soon
as an evaluation crosses one of the run's OLD-task gate limits (`--gate`, `--max-old-drop`,
`--max-nfr`). The best evaluation is the one with the best new-task metric among those that
kept the gate; the run keeps its weights (the anchor weights it was evaluated at) as the arm's
checkpoint, and `summary()` says why the arm stopped and which batch the checkpoint is from.

Every decision reads the evaluation's VALIDATION metrics (the record's "val" entry; the base's
metrics and predictions in the rule are the base's on the validation splits too): the test
split is measured for the report only.

An evaluation has no bootstrap interval, so a limit with `require_significant` is watched
without it here (stricter than the final gate); flip-rate limits (nfr, pfr) compare the
evaluation's old-task predictions with the base's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from goodfit_cli.core import metrics as M
from goodfit_cli.core.units import amount_text, value_text
from goodfit_cli.objectives import direction, unit
from goodfit_cli.core.errors import UserError
from goodfit_cli.report.gate import FLIP_METRICS, Gate, evaluate_gate, units_of


@dataclass
class StopRule:
    """What ends an arm early. `base`: the base's validation metrics {"old": {...}, "new":
    {...}}; `base_old`: its old-task validation predictions {"pred", "target"} (flip rates)."""

    metric: str  # the new task's primary metric
    patience: int | None = None  # evaluations without improvement; None: no plateau stop
    min_delta: float = 0.0
    gate: Gate | None = None  # its old-task limits are watched at every evaluation
    base: dict[str, dict[str, float]] = field(default_factory=dict)
    base_old: dict[str, torch.Tensor] | None = None
    units: dict[str, dict[str, str]] = field(default_factory=dict)  # gate.units_of: messages'

    @property
    def needs_predictions(self) -> bool:
        return self.gate is not None and any(l.metric in FLIP_METRICS for l in self.gate.limits)


def stop_rule(spec: dict[str, Any], metric: str, gate: Gate | None, where: str,
              loss_of: Callable[[str], str] | None = None) -> StopRule | None:
    """The rule a recipe's `finetune.early_stop` section asks for (None when it asks nothing),
    still without the base's metrics. `where` names the section in errors; `loss_of` each
    task's objective (the gate messages read in its units, as the report's)."""
    if not spec or (spec.get("patience") is None and not spec.get("gate")):
        return None
    watched = None
    if spec.get("gate"):
        limits = tuple(dataclasses.replace(l, require_significant=False)
                       for l in (gate.limits if gate is not None else ()) if l.task == "old")
        if not limits:
            raise UserError(f"{where}.gate: true needs an old-task gate limit (--gate FILE, "
                            "--max-old-drop or --max-nfr)")
        watched = Gate(limits, gate.source)
    loss_of = loss_of or (lambda t: None)
    units = units_of(watched, loss_of)
    units.setdefault("new", {})[metric] = unit(metric, loss_of("new"))  # the plateau's words
    return StopRule(metric, spec.get("patience"), float(spec.get("min_delta") or 0.0), watched,
                    units=units)


def flips_of(rule: StopRule, preds: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{"old": {"nfr", "pfr"}} of an evaluation's predictions against the base's."""
    f = M.flips(rule.base_old["pred"], preds["old"]["pred"], rule.base_old["target"])
    return {"old": {"nfr": f["nfr"], "pfr": f["pfr"]}}


class EarlyStop:
    """Follows one arm's evaluations; `observe()` says whether the latest is the new best."""

    def __init__(self, rule: StopRule) -> None:
        self.rule = rule
        self.sign = direction(rule.metric)
        self.best: float | None = None
        self.best_batch: int | None = None
        self.bad = 0  # evaluations since the last improvement
        self.reason: str | None = None  # why it stopped; None while it runs
        self.stopped_at: int | None = None
        self.note: str | None = None  # why the latest evaluation was skipped (the caller logs it)

    def observe(self, rec: dict[str, Any]) -> bool:
        """Take one evaluation record (batch, and "val": {old, new, flips}, the validation
        metrics it decides on); True if its weights are the best so far (the caller keeps them)."""
        self.note = None
        if self.reason is not None:
            return False
        val = rec.get("val") or {}
        batch, value = int(rec["batch"]), (val.get("new") or {}).get(self.rule.metric)
        violations = self._violations(val)
        if violations:
            self._stop(batch, f"old-task gate limit crossed at batch {batch}: {violations[0]}")
            return False
        # NaN (nothing measured) and an infinity on the good side: said, never kept nor
        # counted; an infinity on the bad side (an mse that overflowed) is the worst value, so
        # it counts as no improvement (as the plateau schedule reads it) and is never kept
        worst = value is not None and math.isinf(value) and value * self.sign < 0
        if value is None or (not math.isfinite(value) and not worst):
            self.note = (f"evaluation at batch {batch}: new {self.rule.metric} is {value} on "
                         "validation; early stopping neither keeps nor counts it")
            return False
        if not worst and (self.best is None
                          or (value - self.best) * self.sign > self.rule.min_delta):
            self.best, self.best_batch, self.bad = float(value), batch, 0
            return True
        self.bad += 1
        if self.rule.patience is not None and self.bad >= self.rule.patience:
            u = self.rule.units.get("new", {}).get(self.rule.metric)  # as the report reads it
            u = unit(self.rule.metric) if u is None else u  # a rule made by hand: declared
            best = ("none kept" if self.best is None else
                    f"{value_text(self.best, u)} at batch {self.best_batch}")
            self._stop(batch, f"new {self.rule.metric} did not improve by more than "
                              f"{amount_text(self.rule.min_delta, u)} for {self.bad} evaluation"
                              f"{'s' * (self.bad != 1)} (best {best})")
        return False

    def _stop(self, batch: int, reason: str) -> None:
        self.reason, self.stopped_at = reason, batch

    def _violations(self, val: dict[str, Any]) -> list[str]:
        gate = self.rule.gate
        if gate is None:
            return []
        metrics = {t: dict(val.get(t) or {}) for t in ("old", "new")}
        delta = {t: {m: {"value": v - self.rule.base[t][m], "ci": None, "better": None}
                     for m, v in metrics[t].items() if m in self.rule.base.get(t, {})}
                 for t in metrics}
        arm = {"name": "this arm", "metrics": metrics, "delta": delta,
               "flips": val.get("flips") or {}}
        return evaluate_gate(gate, arm, self.rule.units)["violations"]

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def summary(self, total: int) -> dict[str, Any]:
        """For summary.json and the report: why the arm stopped, where its checkpoint is from."""
        return {"stopped_at": self.stopped_at, "budget": total,
                "reason": self.reason or "ran its whole budget",
                "best_batch": self.best_batch, "split": "val",
                "best": None if self.best is None else {self.rule.metric: self.best},
                "checkpoint": (f"weights of the best evaluation (batch {self.best_batch})"
                               if self.best_batch is not None else
                               "weights where it stopped (no evaluation was kept)")}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_batch": self.best_batch, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_batch, self.bad = state["best"], state["best_batch"], state["bad"]
