"""Early pruning of hopeless `goodfit search` trials from their validation results at rungs.

The rule is asynchronous successive halving (workflows/halving.py: the rungs' batches, how many
of the trials that reached a rung go on). Optuna's own pruners read `trial.report`, which
multi-objective studies do not have, so the values live in each trial's user attributes
(`rungs`: {rung: value}) in the study's storage, shared by every worker. The study's first
`startup` trials are never pruned (default 1: trial 0 sets the rungs' first values and gives
the front a complete trial; more cost fine-tunes and changed no recommendation, docs/results.md).

A trial's value at a rung is what the search will keep of it at the end, measured now: the best
point of its WiSE-FT curve at that batch, (1 - α)·base + α·weights for α = 1.0, 0.8, ... 0.2 in
that order down to the first point that gains on the new task within the gate, then the best
point's neighbour above it at +0.1 (its two at ±0.1 where no point is within the gate): one to
seven evaluations, not the ten of the whole 0.1 grid (the rung curves were most of a study's
evaluations, docs/results.md). Below a point within the gate the curve is not measured: nearer the
base the new task gains no more (the curve's assumption; where it did, the rung undervalues the
trial). By the same assumption, where α = 1 itself gains nothing (a trial that has not yet learned
the new task: many first rungs without old data) the curve is that one point, not six or seven
(docs/benchmarks.md). The end weights' α = 1 is the training's last evaluation where the model
still holds those weights (not measured again). Evaluated on the validation splits, each point's
value is (minus the number of gate limits it violates on validation, with the search's validation
margin; its new-task primary metric oriented so higher is better), compared in that order; only
points that gain on the new task over the base count (the search keeps no other), a trial with none
ranks below every trial with one. Ties (a flat metric: new-task accuracy still 0 at every point of
many trials early in their training) are broken by the new task's mean validation loss, lower first
(among trials with no gaining point: their best (metric, loss) on the curve measured, α = 1's where
α = 1 gains nothing; docs/results.md: without it the first of the tied trials went on; judging the
raw weights instead dropped slow starters and every trial that forgets on the way). The watch is a
progress observer of the trial's fine-tune (trainer/stage.py binds it to the model and the
validation evaluation before training): at a rung's batch it measures the curve, stores the value
and raises `Pruned` out of the training loop; the search ends the trial as pruned, it counts toward
`--trials` and its batches toward the study's compute. With a budget (workflows/budget.py), a trial
kept at its first rung claims the rest of itself, and is pruned there when the budget left cannot
cover it. The base is the model as bound, after the arm set it up (LoRA: its adapters at their
start, so the curve interpolates the adapters, a proxy of the merged weights' curve); weights whose
names or shapes differ from it are judged raw (α = 1). The weights judged are those the trial would
end with now: with finetune.early_stop, its best evaluation's so far (training/callbacks.py
end_weights). With finetune.ema the trial's point may be its '<arm>+ema' (report/trials.py
best_candidate), so a rung measures the EMA's curve too (between the same base and the EMA now: 1-7
more evaluations) and the trial's value there is the best point of either curve, the candidate that
would ship.

A trial's value at a rung is not a lower bound of its end's: without old data it forgets as it
trains. With `keep` (the search's --rung-weights, the default) the watch keeps a host copy of the
weights of its best rung so far, and after the training (`settler`: the last callback, early
stopping's best already in the model) measures the end weights' curve the same way: where the
rung's point is strictly better (fewer violations, then the new-task metric), the model takes
the rung's weights and the arm's summary names the batch (`rung_weights`). Not with an EMA.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable

from goodfit_cli.core.callbacks import Callback
from goodfit_cli.models.layout import weights_version
from goodfit_cli.report.gate import FLIP_METRICS, Gate, evaluate_gate
from goodfit_cli.report.margin import tightened
from goodfit_cli.report.verdict import point_view
from goodfit_cli.workflows.budget import Budget, claim, held
from goodfit_cli.workflows.halving import Halving
from goodfit_cli.workflows.mixing import Mixing

ALPHAS = (1.0, 0.8, 0.6, 0.4, 0.2)  # a rung's curve, in this order (α = 0: the base), then
STEP = 0.1  # the best's neighbours at this distance: the 0.1 grid's best


class Pruned(Exception):
    """Raised by the watch at the evaluation where a trial is pruned."""

    ends_loop = True  # not an error: a signal that came meanwhile still stops the command

    def __init__(self, batch: int, rung: int, why: str) -> None:
        super().__init__(why)
        self.batch, self.rung = batch, rung


def value_of(val: dict[str, Any], base_val: dict[str, Any], gate: Gate | None,
             primary: dict[str, str], new_dir: int, z: float = 0.0,
             n: dict[str, int] | None = None) -> tuple[float, ...] | None:
    """One point's gate-aware value (see the module's docstring; `z`, `n`: the validation
    margin and sample counts, report/margin.py), with minus the new task's mean validation
    loss last where the evaluation measured it; None when its new-task metric is missing or
    not finite."""
    new = (val.get("new") or {}).get(primary["new"])
    if new is None or not math.isfinite(new):
        return None
    bad = 0
    if gate is not None:
        view = {**point_view({t: val.get(t) or {} for t in ("old", "new")}, base_val),
                "flips": val.get("flips") or {}}
        limits = tightened(gate, view, z, n or {})
        bad = len(evaluate_gate(limits, {"name": "evaluation", **view})["violations"])
    loss = (val.get("new") or {}).get("loss")  # the tie-break of a flat metric (below)
    tie = (-float(loss),) if loss is not None and math.isfinite(loss) else ()
    return (-float(bad), new_dir * float(new), *tie)


def at_rung(t: Any, new_dir: int) -> dict[str, Any]:
    """A trial that did not finish (pruned): its last rung's value as the pruner judged it
    (`value_of`, `PruneWatch.value`: minus the gate limits its best WiSE-FT point crossed on
    validation, the oriented new-task metric), for the search's report, as {"rung", "rung_new", "rung_violations"};
    `rung_violations` None where no point of its curve gained on the new task. {} otherwise."""
    rungs = t.user_attrs.get("rungs") or {}
    if t.state.name == "COMPLETE" or not rungs:
        return {}
    k = max(rungs, key=int)
    value, limits = rungs[k], t.user_attrs.get("rung_limits")
    bad = -int(value[0])
    return {"rung": int(k), "rung_new": new_dir * value[1],
            "rung_violations": bad if limits is None or bad <= limits else None}


class PruneWatch:
    """The progress events of one trial's fine-tune (`inner`: the console's, or None): bound
    to the model, at each rung's batch it measures the trial's WiSE-FT curve on validation,
    stores the trial's value and raises `Pruned` when the rule drops it. `z`: the validation
    margin the search judges the gate with."""

    def __init__(self, trial: Any, halving: Halving, trial_dir: Path, gate: Gate | None,
                 primary: dict[str, str], new_dir: int, inner: Any = None,
                 z: float = 0.0, protected: bool | None = None,
                 budget: Budget | None = None, keep: bool = False) -> None:
        self.trial, self.halving, self.dir, self.gate = trial, halving, trial_dir, gate
        self.primary, self.new_dir, self.inner, self.z = primary, new_dir, inner, z
        # never pruned: one of the study's first `startup` trials (default: by its number)
        self.protected = trial.number < halving.startup if protected is None else protected
        # the study's budget (workflows/budget.py): claimed past the first rung (the docstring)
        self.budget, self.claimed = budget, bool(self.protected)
        self.rungs: list[int] = []
        self.total = 0
        self.seen = 0  # the last batch trained (a trial cut short holds it: budget.trained)
        self.reached: dict[str, list[float]] = {}
        self.model: Any = None
        self.others: Callable[[], list[Any]] = list  # `bind`: the other candidates
        # the rungs' evaluations count flips against the base (trainer/stage.py rung_evaluation)
        self.wants_flips = gate is not None and any(l.metric in FLIP_METRICS for l in gate.limits)
        # `keep`: the trial may end with a rung's weights (`KeepRung`); `kept`: the best rung's
        # (value, batch, rung, weights, the weights' batch, their curve's measurements) so far
        self.keep, self.kept = keep, None
        self.base_val: dict | None = None  # the base's validation metrics, read once
        # (weights_version, {α: (val metrics, predictions)}) of the curve `settle` measured
        self.end_measured: tuple[Any, dict] | None = None

    def bind(self, model: Any, evaluate: Callable[[Any], dict], sizes: dict[str, int],
             anchor: Callable[[], Any] = contextlib.nullcontext,
             others: Callable[[], list[Any]] = list,
             held: Callable[[], int | None] = lambda: None) -> None:
        """Called before training, the model holding the base's weights: `evaluate(model)` its
        validation metrics {"old": {...}, "new": {...}}, `sizes` each task's validation samples,
        `anchor()` a context inside which the model holds the weights a rung judges, those the
        trial would end with now (early stopping's best evaluation's; GoodFit's anchor: mid-cycle
        the model holds displaced weights no one ships), `others()` the trial's other candidates
        as modules of the model's weights (finetune.ema: the EMA's averaged copy), each measured
        on its own curve from the same base; `held()` the batch of the weights `anchor` holds
        where they are not the last batch's (early stopping's best evaluation), else None."""
        self.model, self.evaluate, self.sizes, self.anchor = model, evaluate, sizes, anchor
        self.others, self.held = others, held
        self.base = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_start(self, total_batches: int, done: int) -> None:
        self.rungs = self.halving.rung_batches(total_batches) if self.halving.rungs else []
        self.total = total_batches
        self.claimed = self.claimed or not self.rungs
        if self.budget is not None:  # the trial's length as the arm rounds it (whole cycles):
            need = total_batches if self.claimed else self.rungs[0]  # claimed exactly now
            if need > held(self.trial) and not claim(self.trial, need, self.budget):
                raise Pruned(done, 0, f"pruned before training by the budget: "
                                      f"{self.budget.finetunes:g} fine-tunes do not cover its "
                                      f"first {need} batches")
        if self.inner is not None:
            self.inner.on_start(total_batches, done)

    def on_batch(self, batch: int) -> None:
        self.seen = batch
        if self.inner is not None:
            self.inner.on_batch(batch)
        due = [k for k, b in enumerate(self.rungs) if b == batch and str(k) not in self.reached]
        if due and self.model is not None:
            self.trial.set_user_attr("batches", batch)  # the trial's training so far (its cost)
            raw: dict[float, tuple[dict, dict]] = {}  # the judged weights' own curve
            value = self._judge(batch, due, self.curve(raw))
            if self.keep and value is not None and not self.others() and (
                    self.kept is None or value[:2] > self.kept[0][:2]):  # not by loss alone
                with self.anchor():  # the weights the rung judged, a copy on the host
                    weights = {k: v.detach().to("cpu", copy=True)
                               for k, v in self.model.state_dict().items()}
                of = self.held()  # early stopping's best evaluation's, or this batch's
                self.kept = (value, batch, due[-1], weights, batch if of is None else of, raw)

    def on_end(self) -> None:
        # no rung is judged after the training: what `bind` holds is let go (the base's copy;
        # through `anchor`, the optimizer's state; the EMA's), not kept through the WiSE-FT
        # curve and the trial's point (before: a model's size each, to the trial's end); with a
        # rung's weights kept, once `settle` has compared them with the end's
        if self.kept is None:
            self.release()
        if self.inner is not None:
            self.inner.on_end()

    def settler(self) -> Callback | None:
        """The callback that settles a kept rung's weights, last of the training's."""
        return KeepRung(self) if self.keep else None

    def release(self) -> None:
        self.model, self.evaluate, self.base, self.kept = None, None, {}, None
        self.anchor, self.others, self.held = contextlib.nullcontext, list, lambda: None

    def settle(self, model: Any) -> dict[str, Any]:
        """After the training and its callbacks (early stopping's best is in `model`): when
        the best point of a rung's curve is better than the best of the end weights' curve,
        judged the same way, `model` takes that rung's weights; the arm's summary says which.
        The curve measured of the weights kept is handed on (`measured_end`)."""
        kept, self.kept = self.kept, None
        if kept is None or self.evaluate is None:
            self.release()
            return {}
        raw: dict[float, tuple[dict, dict]] = {}
        end = self.value(self._curve(model, raw))
        value, at, rung, weights, batch, at_rung = kept  # `batch`: the weights', `at`: rung's
        self.release()
        if end is not None and end[:2] >= value[:2]:  # the end's unless the rung's is better
            self.end_measured = (weights_version(model), raw)
            return {}  # on the gate or the new task (a tie on both: the end's, whatever loss)
        model.load_state_dict(weights)
        self.end_measured = (weights_version(model), at_rung)  # the rung measured their curve
        self.trial.set_user_attr("weights_batch", batch)
        return {"rung_weights": {"batch": batch, "rung": rung, "rung_batch": at,
                                 "value": list(value),
                                 "end_value": None if end is None else list(end)}}

    def measured_end(self, model: Any) -> dict[float, tuple[dict, dict]] | None:
        """The end weights' curve as `settle` measured it, {α: (validation metrics, predictions)}
        of (1 - α)·base + α·weights, when `model` still holds exactly those weights (nothing
        written since: trainer/stage.py reads it once, after the arm's finish); else None."""
        made, self.end_measured = self.end_measured, None
        return made[1] if made is not None and weights_version(model) == made[0] else None

    def value(self, points: list[dict[str, Any]]) -> tuple | None:
        """A curve's value (the module's docstring): its best gaining point's, else below
        every trial with one; None when no point has a finite new-task metric."""
        if self.base_val is None:  # written before training, read once per trial
            self.base_val = json.loads((self.dir / "base" / "metrics.json").read_text())[
                "val_metrics"]
        base = self.base_val
        values = [v for v in (value_of(p, base, self.gate, self.primary, self.new_dir, self.z,
                                       self.sizes) for p in points) if v is not None]
        if not values:
            return None
        at_base = self.new_dir * ((base.get("new") or {}).get(self.primary["new"]) or 0.0)
        gaining = [v for v in values if v[1] > at_base]  # the search keeps no other point
        return max(gaining) if gaining else (self.worst(), *max(v[1:] for v in values))

    def worst(self) -> float:
        """The first element of the value of a curve with no gaining point (below any other)."""
        return -float(len(self.gate.limits) + 1 if self.gate is not None else 1)

    def gains(self, point: dict[str, Any]) -> bool:
        """Whether `point` gains on the new task over the base (within the gate or not)."""
        v = self.value([point])
        return v is not None and v[0] > self.worst()

    def within(self, point: dict[str, Any]) -> bool:
        """Whether `point` gains on the new task and keeps every limit of the gate."""
        v = self.value([point])
        return v is not None and v[0] == 0

    def on_evaluation(self, rec: dict[str, Any]) -> None:
        if self.inner is not None:
            self.inner.on_evaluation(rec)
        self.trial.set_user_attr("batches", int(rec["batch"]))

    def curve(self, raw: dict | None = None) -> list[dict[str, Any]]:
        """The validation metrics of (1 - α)·base + α·now for each α of ALPHAS down to the first
        point within the gate and the best one's neighbour(s) at ±STEP (the module's
        docstring), in order of α (only α = 1 when the weights' names or shapes
        are not the base's), "now" being the weights at the
        anchor (`bind`; their raw measurements into `raw`, see `_curve`), then those of each
        other candidate's curve (its weights now); every module's weights are back exactly as
        they were after it."""
        with self.anchor():
            points = self._curve(self.model, raw)
        for other in self.others():
            points += self._curve(other)
        return points

    def _curve(self, model: Any, raw: dict | None = None) -> list[dict[str, Any]]:
        """One model's curve (see `curve`); `raw`, when given, gets each α's (validation
        metrics, predictions) as the evaluation measured them (`evaluate.last`)."""
        import torch

        now = {k: v.detach().clone() for k, v in model.state_dict().items()}
        same = now.keys() == self.base.keys() and all(
            now[k].shape == self.base[k].shape for k in now)
        own = model.state_dict()
        modes = [(m, m.training) for m in model.modules()]  # evaluation switches them
        points: dict[float, dict[str, Any]] = {}
        written: list[float] = []  # the α written into the model (none: it holds `now`)
        # the WiSE-FT grid's own mix (α = 1: the weights themselves, exactly; counters from
        # the nearer end), so a point measured here is the grid's point (`measured_end`)
        mixing = Mixing(model, self.base, now) if same else None

        def measure(a: float) -> None:
            if mixing is not None and (points or a != 1.0):  # α = 1 first: the model, unwritten
                mixing.set(a)
                written.append(a)
            points[a] = self.evaluate(model)
            if raw is not None and getattr(self.evaluate, "last", None) is not None:
                raw[round(a, 6)] = self.evaluate.last

        with torch.no_grad():
            for a in ALPHAS if same else (1.0,):
                measure(a)
                if self.within(points[a]):  # nothing nearer the base gains more (docstring)
                    break
                if a == 1.0 and not self.gains(points[a]):  # nor gains at all (docstring)
                    same = False  # no neighbours either
                    break
            if same:  # the best point's neighbours on the 0.1 grid (the first best, on a tie)
                best = max(points, key=lambda a: self.value([points[a]]) or (-math.inf,))
                near = (best + STEP,) if self.within(points[best]) else (best - STEP, best + STEP)
                for a in (round(a, 6) for a in near):
                    if 0 < a < 1 and a not in points:
                        measure(a)
            for k, v in now.items() if written else ():  # (unwritten: a later read of
                own[k].copy_(v)  # the same weights, StageHooks.measured, still knows them)
        for m, training in modes:
            m.train(training)
        return [points[a] for a in sorted(points)]

    def _judge(self, batch: int, due: list[int], points: list[dict[str, Any]]) -> tuple | None:
        value = self.value(points)
        if value is None:
            return None
        # how many limits the values are judged on (below them: no point gained; `at_rung`)
        self.trial.set_user_attr("rung_limits", len(self.gate.limits) if self.gate else 0)
        for k in due:
            others = [tuple(t.user_attrs["rungs"][str(k)]) for t in
                      self.trial.study.get_trials(deepcopy=False)
                      if t.number != self.trial.number and str(k) in t.user_attrs.get("rungs", {})
                      and not gone(t)]
            self.reached[str(k)] = list(value)
            self.trial.set_user_attr("rungs", self.reached)
            if not self.protected and not self.halving.keeps(value, others):
                of = " (of its arm's and its EMA's curves)" if self.others() else ""
                raise Pruned(batch, k, f"pruned at batch {batch} (rung {k}): its best WiSE-FT "
                                       f"point{of} is not {self.halving.kept(len(others) + 1)}")
            if self.budget is not None and not self.claimed:
                if not claim(self.trial, self.total, self.budget):
                    raise Pruned(batch, k, f"pruned at batch {batch} (rung {k}) by the budget: "
                                           f"{self.budget.finetunes:g} fine-tunes do not cover "
                                           f"the rest of this trial ({self.total} batches)")
                self.claimed = True
        return value


class KeepRung(Callback):
    """The last of a trial's training callbacks (trainer/stage.py): `PruneWatch.settle`."""

    name = "keep_rung"

    def __init__(self, watch: PruneWatch) -> None:
        self.watch = watch

    def on_end(self, model: Any) -> dict[str, Any]:
        return self.watch.settle(model)


def gone(t: Any) -> bool:
    """Whether trial `t` ended without an outcome (interrupted, its worker died: it runs again,
    so a retry is never judged against its own first attempt)."""
    return t.state.name == "FAIL" or "interrupted" in t.user_attrs


def watching(ui_events: Callable[[str], Any] | None, make: Callable[[Any], PruneWatch],
             made: list[PruneWatch] | None = None) -> Callable[[str], PruneWatch]:
    """A `Ui.events_for` that wraps each run's events (`ui_events(label)`) in a watch, each
    also appended to `made` (the caller reads what they saw: `PruneWatch.seen`)."""
    def events(label: str) -> PruneWatch:
        w = make(ui_events(label) if ui_events is not None else None)
        if made is not None:
            made.append(w)
        return w
    return events
