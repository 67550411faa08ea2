"""The engine's hooks for one training run: evaluation on both tasks, metrics.jsonl, resumable
states on schedule, stop requests; and the run's callbacks (training/callbacks.py: early
stopping, the plateau watch, GoodFit's cycle statistics, the EMA, tracking) with the states
they saved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from goodfit_cli.core.distributed import StopFlag, dist_info
from goodfit_cli.engine import Events, Hooks, LoopState
from goodfit_cli.io.atomic import write_jsonl
from goodfit_cli.io.rundir import devices_used, state_files
from goodfit_cli.io.states import StateWriter
from goodfit_cli.models.layout import weights_version
from goodfit_cli.trainer.job import Log, StageJob
from goodfit_cli.trainer.measured import Measured
from goodfit_cli.trainer.session import Session
from goodfit_cli.trainer.tracking import Tracking
from goodfit_cli.training import at_anchor, train_mode
from goodfit_cli.training.callbacks import (
    Callback,
    EarlyStopping,
    Ema,
    GoodFitCycles,
    PlateauWatch,
    states,
    step_callbacks,
)


class StageHooks(Hooks):
    """The engine's hooks for one run: evaluate on both tasks, write metrics.jsonl at every
    evaluation and resumable states on schedule (rank 0), stop on a signal; every other
    feature is one of `callbacks` (training/callbacks.py), whose states it saves by name."""

    def __init__(self, s: Session, model: nn.Module, optimizer, scheduler, job: StageJob,
                 stop: StopFlag, records: list[dict], callbacks: list[Callback],
                 identity: str | None = None) -> None:
        self.s, self.model, self.optimizer, self.scheduler = s, model, optimizer, scheduler
        self.job, self.stop, self.records, self.callbacks = job, stop, records, callbacks
        self.identity = identity  # what each state records (trainer/runcheck.py)
        self.devices = devices_used({}, str(s.device))  # what trained it (a resume: stage.py)
        self.main_rank = dist_info()[0] == 0
        self._train_mode = train_mode(job.arm)
        self.last: tuple[list, Measured] | None = None  # the last evaluation's weights, results
        self.states = StateWriter()  # resumable states, written behind the training

    def after_step(self, batch: int) -> None:
        step_callbacks(self.callbacks, self.optimizer, batch)  # GoodFit: main steps only

    def measured(self, model: nn.Module) -> Measured | None:
        """The last evaluation's (test metrics, predictions, val metrics, predictions) when
        `model` still holds exactly the weights it measured (no tensor written since); the
        test pair is (None, None) when the evaluation measured validation only."""
        if self.last is None or weights_version(model) != self.last[0]:
            return None
        return self.last[1]

    def evaluate(self) -> dict[str, Any]:
        """The record's measurements: the validation splits ("val", what early stopping, the
        plateau schedule and the curves read), and the test splits ("old", "new") only under
        eval.curves: test+val; the test splits are otherwise measured once, at the end."""
        t0, counted_before = time.perf_counter(), self.s.eval_s
        wanted = any(c.wants_predictions for c in self.callbacks)
        before = weights_version(self.model)
        with at_anchor(self.optimizer):  # never the displaced weights of a half-done cycle
            evaluated = weights_version(self.model)
            res, test_preds = (self.s.evaluate(self.model, True)
                               if self.s.recipe.curves_on_test else ({}, None))
            val, preds = self.s.evaluate(self.model, True, split="val")
        # the weights measured, unless the anchor was swapped in for it: the run's result if
        # nothing changes them before the end (finish measures no model twice)
        self.last = ((evaluated, ({t: dict(m) for t, m in res.items()} if res else None,
                                  test_preds, {t: dict(m) for t, m in val.items()}, preds))
                     if evaluated == before == weights_version(self.model) else None)
        res["val"] = val  # what early stopping and the plateau schedule read (choices: on val)
        for c in self.callbacks:
            c.on_evaluate(res, preds if wanted else None)
        ref_ratio = getattr(self.optimizer, "ref_ratio", None)
        if ref_ratio:
            res["lr_ref"] = float(self.optimizer.param_groups[0]["lr"]) / ref_ratio
        # the evaluation's own time, the callbacks' reading of it included (not the training's)
        self.s.eval_s = counted_before + time.perf_counter() - t0
        return res

    def train_mode(self, model: nn.Module) -> None:
        self._train_mode(model)

    def should_stop(self, batch: int) -> bool:
        signalled = self.stop.requested(batch, self.s.device,  # every rank, every batch
                                        settle=self.states.wait)
        return signalled or any(c.should_stop() for c in self.callbacks)

    def save_state(self, st: LoopState) -> None:
        """A resumable state: copied here, written behind the training (io/states.py
        StateWriter); the time it holds the training up is the session's `state_s`."""
        if not self.main_rank:
            return
        t0 = time.perf_counter()
        out, keep = self.job.out, self.s.recipe.checkpoint_keep

        def prune() -> None:  # keep the newest K
            for old in state_files(out)[:-keep]:
                old.unlink(missing_ok=True)

        self.states.save(out / f"state-{st.batch:08d}.safetensors", {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "callbacks": states(self.callbacks), "rng": torch.get_rng_state(),
            "loop": st.to_dict(), "identity": self.identity, **self.devices}, prune=prune)
        self.s.state_s += time.perf_counter() - t0

    @contextmanager
    def states_written(self) -> Iterator[None]:
        """Around the training: every state on disk when it ends (a write's error raised then;
        if the training failed, its own error)."""
        try:
            yield
        except BaseException:
            self.states.close(quiet=True)
            raise
        t0 = time.perf_counter()
        try:
            self.states.close()
        finally:
            self.s.state_s += time.perf_counter() - t0

    def record(self, rec: dict) -> None:
        """Keep an evaluation's record: metrics.jsonl rewritten (atomically) and the callbacks
        (tracking's metrics.csv, TensorBoard, MLflow); `Recording` counts its time as the
        evaluation's."""
        self.records.append(rec)
        if self.main_rank:
            write_jsonl(self.job.out / "metrics.jsonl", self.records)
        for c in self.callbacks:
            c.on_record(rec, self.records)



def periodic(s: Session, model: nn.Module) -> dict[str, Any]:
    """A periodic evaluation's measurements of `model` in record form: {"val": {...}}, and the
    test splits' {"old", "new"} beside it under eval.curves: test+val."""
    out = s.evaluate(model) if s.recipe.curves_on_test else {}
    return {**out, "val": s.evaluate(model, split="val")}


def saved_callbacks(saved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The callbacks' states in a resumable state. States written before callbacks owned
    theirs kept the EMA's and early stopping's at the top, and LP-FT's step count was the
    loop's optimizer steps."""
    if "callbacks" in saved:
        return saved["callbacks"]
    loop = saved["loop"]
    legacy = {k: saved[k] for k in ("ema", "early_stop") if saved.get(k) is not None}
    legacy["lp_ft"] = {"steps": loop["batch"] - loop.get("skipped", 0)}
    return legacy


class Recording:
    """Events that write metrics.jsonl at every evaluation, then pass everything on."""

    def __init__(self, hooks: StageHooks, events: Events | None) -> None:
        self.hooks, self.events = hooks, events

    def on_start(self, total_batches: int, done: int) -> None:
        if self.events is not None:
            self.events.on_start(total_batches, done)

    def on_batch(self, batch: int) -> None:
        if self.events is not None:
            self.events.on_batch(batch)

    def on_evaluation(self, rec: dict) -> None:
        """The record kept, then passed on (the console, a search's watch writing to its
        study); all of it is the evaluation's time, not the training's."""
        s = self.hooks.s
        t0, counted_before = time.perf_counter(), s.eval_s
        self.hooks.record(rec)
        if self.events is not None:
            self.events.on_evaluation(rec)
        s.eval_s = counted_before + time.perf_counter() - t0  # what ran inside counted once

    def on_end(self) -> None:
        if self.events is not None:
            self.events.on_end()


def callbacks_for(s: Session, model: nn.Module, optimizer, scheduler, job: StageJob,
                  total: int, decay: float | None, log: Log) -> list[Callback]:
    """The run's features, in the order their hooks run: early stopping (its flip rates and
    the plateau watch come before anything reads the learning rate), the schedule's watch,
    GoodFit's cycle statistics, the EMA, tracking (rank 0)."""
    out: list[Callback] = []
    if job.stop_rule is not None:
        out.append(EarlyStopping(job.stop_rule, model, optimizer, total,
                                 lambda m: log(f"{job.arm.name}: {m}")))
    if scheduler is not None:  # plateau watches the trained task's primary metric
        out.append(PlateauWatch(scheduler, job.task, s.recipe.primary[job.task]))
    out.append(GoodFitCycles(optimizer))
    if decay:
        out.append(Ema(model, optimizer, decay, lambda m: periodic(s, m)))
    if dist_info()[0] == 0:
        out.append(Tracking(job.out, s.recipe.tracking, job.arm.name))
    return out
