"""One training run (a pretrain, or one fine-tuning arm): model + arm + stage -> an arm folder.

Builds the arm's batch source, optimizer, scheduler and callbacks (its training features:
training/callbacks.py), resumes from the newest resumable state, drives the engine through
`StageHooks` (evaluation, states, stop requests), checks the result is finite, and writes the
arm's files (model, predictions, metrics, summary). Under torchrun the model
trains wrapped in DistributedDataParallel; only rank 0 writes and speaks.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from goodfit_cli.core.distributed import StopFlag, dist_info
from goodfit_cli.core.errors import Diverged, Interrupted
from goodfit_cli.core.text import printable
from goodfit_cli.data.inputs import recorded
from goodfit_cli.data.replay import describe, mix
from goodfit_cli.data.sources import source_of
from goodfit_cli.engine import (
    Events,
    Hooks,
    LoopConfig,
    LoopState,
    batches_per_epoch,
    main_steps,
    train,
)
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file, write_json, write_jsonl
from goodfit_cli.io.rundir import (
    RunResult,
    keep_previous,
    newest_state,
    read_jsonl,
    save_predictions,
    state_files,
)
from goodfit_cli.objectives import direction
from goodfit_cli.recipe import StageSpec
from goodfit_cli.trainer.measured import Measured
from goodfit_cli.trainer.runcheck import claim_stage
from goodfit_cli.trainer.session import Session
from goodfit_cli.trainer.tracking import Tracking
from goodfit_cli.arms import Context, OldTask
from goodfit_cli.training import (
    Arm,
    arm_training,
    at_anchor,
    build_optimizer,
    build_scheduler,
    cycle_length,
    describe_optimizer,
    finish_cycle,
    stage_for_arm,
    train_mode,
    whole_cycles,
)
from goodfit_cli.training.callbacks import (
    Callback,
    EarlyStopping,
    Ema,
    GoodFitCycles,
    PlateauWatch,
    load_states,
    states,
)
from goodfit_cli.training.early_stop import StopRule

Log = Callable[[str], None]


def quiet(_msg: str) -> None:
    """A log that says nothing (ranks other than 0, tests)."""


@dataclass
class Ui:
    """What a workflow tells the person running it: log lines, and each run's progress events."""

    log: Log = quiet
    events_for: Callable[[str], Events] | None = None  # a run's label -> its progress events

    def __post_init__(self) -> None:
        said = self.log  # lines quote names read from files: never their ESC or bidi characters
        self.log = lambda msg: said(printable(msg))

    def events(self, label: str) -> Events | None:
        return self.events_for(label) if self.events_for is not None else None


@dataclass
class StageJob:
    """What one training run is: the arm, its stage settings, the task it trains on, its folder."""

    arm: Arm
    stage: StageSpec
    task: str  # "old" (pretrain) or "new" (fine-tune)
    out: Path
    metadata: dict[str, Any] = field(default_factory=dict)  # written into the model's header
    stop_rule: StopRule | None = None  # early stopping (fine-tuning arms)
    summary: dict[str, Any] = field(default_factory=dict)  # more entries for summary.json


def total_batches(budget: dict[str, Any], n: int, accumulate: int = 1) -> int:
    """Optimizer steps in the budget (an epoch is n samples in steps of batch_size x accumulate)."""
    if budget.get("steps"):
        return int(budget["steps"])
    return int(budget["epochs"]) * batches_per_epoch(n, budget["batch_size"] * accumulate)


class StageHooks(Hooks):
    """The engine's hooks for one run: evaluate on both tasks, write metrics.jsonl at every
    evaluation and resumable states on schedule (rank 0), stop on a signal; every other
    feature is one of `callbacks` (training/callbacks.py), whose states it saves by name."""

    def __init__(self, s: Session, model: nn.Module, optimizer, scheduler, job: StageJob,
                 stop: StopFlag, records: list[dict], callbacks: list[Callback]) -> None:
        self.s, self.model, self.optimizer, self.scheduler = s, model, optimizer, scheduler
        self.job, self.stop, self.records, self.callbacks = job, stop, records, callbacks
        self.main_rank = dist_info()[0] == 0
        self._train_mode = train_mode(job.arm)
        self.last: tuple[list, Measured] | None = None  # the last evaluation's weights, results

    def measured(self, model: nn.Module) -> Measured | None:
        """The last evaluation's (test metrics, predictions, val metrics, predictions) when
        `model` still holds exactly the weights it measured (no tensor written since)."""
        if self.last is None or weights_version(model) != self.last[0]:
            return None
        return self.last[1]

    def after_step(self, batch: int) -> None:
        for c in self.callbacks:
            c.on_step(batch)

    def evaluate(self) -> dict[str, Any]:
        wanted = any(c.wants_predictions for c in self.callbacks)
        before = weights_version(self.model)
        with at_anchor(self.optimizer):  # never the displaced weights of a half-done cycle
            evaluated = weights_version(self.model)
            res, test_preds = self.s.evaluate(self.model, True)  # test: the report's curves
            val, preds = self.s.evaluate(self.model, True, split="val")
        # the weights measured, unless the anchor was swapped in for it: the run's result if
        # nothing changes them before the end (_finish measures no model twice)
        self.last = ((evaluated, ({t: dict(m) for t, m in res.items()}, test_preds,
                                  {t: dict(m) for t, m in val.items()}, preds))
                     if evaluated == before == weights_version(self.model) else None)
        res["val"] = val  # what early stopping and the plateau schedule read (choices: on val)
        for c in self.callbacks:
            c.on_evaluate(res, preds if wanted else None)
        ref_ratio = getattr(self.optimizer, "ref_ratio", None)
        if ref_ratio:
            res["lr_ref"] = float(self.optimizer.param_groups[0]["lr"]) / ref_ratio
        return res

    def train_mode(self, model: nn.Module) -> None:
        self._train_mode(model)

    def should_stop(self, batch: int) -> bool:
        signalled = self.stop.requested(batch, self.s.device)  # every rank, every batch
        return signalled or any(c.should_stop() for c in self.callbacks)

    def save_state(self, st: LoopState) -> None:
        if not self.main_rank:
            return
        out = self.job.out
        ckpt.save_state(out / f"state-{st.batch:08d}.safetensors", {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "callbacks": states(self.callbacks), "rng": torch.get_rng_state(),
            "loop": st.to_dict()})
        for old in state_files(out)[:-self.s.recipe.checkpoint_keep]:  # keep the newest K
            old.unlink(missing_ok=True)

    def record(self, rec: dict) -> None:
        self.records.append(rec)
        if self.main_rank:
            write_jsonl(self.job.out / "metrics.jsonl", self.records)
        for c in self.callbacks:
            c.on_record(rec, self.records)


def weights_version(model: nn.Module) -> list[tuple[int, int]]:
    """Where each parameter and buffer lives and how often it was written in place: equal
    lists, the same weights (an optimizer step, load_state_dict or a swap changes it)."""
    return [(t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers())]


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


class _Recording:
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
        self.hooks.record(rec)
        if self.events is not None:
            self.events.on_evaluation(rec)

    def on_end(self) -> None:
        if self.events is not None:
            self.events.on_end()


@dataclass
class Ran:
    """What one run's loop did, for its files: the loop's end state and records, the
    training samples and new-task samples per step, and the summary's further entries."""

    st: LoopState
    records: list[dict]
    sizes: tuple[int, int]
    summary: dict[str, Any]  # replay, cycles (GoodFit), the callbacks' entries, the job's own
    measured: Measured | None = None  # the final weights' evaluation, made by the loop's last


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
        out.append(Ema(model, optimizer, decay, s.evaluate))
    if dist_info()[0] == 0:
        out.append(Tracking(job.out, s.recipe.tracking, job.arm.name))
    return out


def run_stage(s: Session, model: nn.Module, job: StageJob, stop: StopFlag, ui: Ui) -> RunResult:
    """Train `model` on the job's task with the arm's optimizer; write the job's folder."""
    rank, world, _ = dist_info()
    main_rank = rank == 0
    arm, out = job.arm, job.out
    log = ui.log if main_rank else quiet
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
    budget = stage_for_arm(job.stage, arm)
    data = s.tasks[job.task].train
    source, replayed = source_of(data), None
    if job.stage.replay is not None and job.task == "new":  # old-task samples in every batch
        source = mix(data, s.tasks["old"].train, job.stage.replay, budget["batch_size"], s.seed,
                     s.recipe.at("finetune.replay"))
        replayed = describe(source, job.stage.replay, s.seed)
    new_per_batch = budget["batch_size"] - (replayed["old_per_batch"] if replayed else 0)
    asked = total_batches({**budget, "batch_size": new_per_batch}, len(data),
                          job.stage.accumulate)
    optimizer = build_optimizer(arm, model, job.stage, lr=budget["lr"])  # freezes before DDP wraps
    total = whole_cycles(optimizer, asked)
    if total != asked:
        log(f"{arm.name}: {asked} batches rounded up to {total}, whole cycles of "
            f"{cycle_length(optimizer)} (n_ref reference batches + 1 main batch)")
    mode = "max" if direction(s.recipe.primary[job.task]) > 0 else "min"
    scheduler = build_scheduler(job.stage.scheduler, optimizer, total, mode)
    built = arm_training(arm, job.stage, job.task, arm_context(s, job, model, optimizer, total),
                         lambda: old_task(s), s.recipe.source)  # at the base, before resuming
    loss, arm_callbacks = built.loss, list(built.callbacks)
    cfg = LoopConfig(total, budget["batch_size"], min(s.recipe.eval_every, total), s.seed,
                     s.recipe.checkpoint_every, rank, world, s.recipe.nonfinite,
                     job.stage.accumulate, job.stage.clip.get("norm"), job.stage.clip.get("value"))
    trained = torch.compile(model) if s.recipe.compile else model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    loop_state = None
    records: list[dict] = []
    if main_rank:  # only this run's own states are resumed
        claim_stage(out, s.recipe, s.seed, arm.name, job.metadata, log)

    def restore(saved: dict) -> None:  # raises on a state that does not fit: an older one is tried
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        LoopState.from_dict(saved["loop"])
        torch.set_rng_state(saved["rng"])

    saved = newest_state(out, log, restore)
    if saved is not None:  # resume exactly where the saved state left off
        loop_state = LoopState.from_dict(saved["loop"])
        records = [r for r in read_jsonl(out / "metrics.jsonl") if r["batch"] <= loop_state.batch]
        log(f"{arm.name}: resuming at batch {loop_state.batch}/{total}")

    decay = budget.get("ema")
    callbacks = arm_callbacks + callbacks_for(s, model, optimizer, scheduler, job, total,
                                                     decay, log)
    if saved is not None:
        load_states(callbacks, saved_callbacks(saved))
    hooks = StageHooks(s, model, optimizer, scheduler, job, stop, records, callbacks)
    events = _Recording(hooks, ui.events(arm.name) if main_rank else None)
    try:
        st = train(trained, optimizer, scheduler, source, loss, cfg, hooks,
                   events=events, state=loop_state)
    except Diverged as e:
        kept = state_files(out)
        where = f"; the last good state is {kept[-1]}" if kept else "; no state was saved yet"
        raise Diverged(e.batch, f" of {arm.name}{where} (lower the learning rate, or set "
                                "nonfinite: skip in the recipe)") from None
    if st.batch < total and not any(c.should_stop() for c in callbacks):
        raise Interrupted(stop.signum or signal.SIGINT, out)  # the state is saved, nothing else
    summary: dict[str, Any] = {}
    if replayed:
        summary["replay"] = replayed
    cycles = {"batches_per_cycle": cycle_length(optimizer), "budget_asked": asked,
              "budget_ran": total, "partial_cycle_dropped": finish_cycle(optimizer)}
    if cycles["batches_per_cycle"] > 1:
        summary["cycles"] = cycles
    for c in callbacks:  # early stopping puts its best evaluation's weights in the model
        summary.update(c.on_end(model))
    sizes = (len(data), new_per_batch * job.stage.accumulate)  # new samples per step
    ema = next((c for c in callbacks if isinstance(c, Ema)), None)
    if ema is not None:  # the averaged weights: a candidate of their own, written first
        _finish(s, ema.module, optimizer, ema_job(job, records, decay),
                Ran(st, ema_records(records), sizes, {k: v for k, v in summary.items()
                                                       if k != "early_stop"}))
    return _finish(s, model, optimizer, job, Ran(st, records, sizes, {**summary, **job.summary},
                                                  hooks.measured(model)))


def ema_job(job: StageJob, records: list[dict], decay: float) -> StageJob:
    """The '<arm>+ema' candidate's job: its own folder beside the arm's, with its curve."""
    arm = Arm(f"{job.arm.name}+ema", job.arm.kind, job.arm.optimizer)
    out = job.out.parent / arm.dirname
    if dist_info()[0] == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "metrics.jsonl", ema_records(records))
    return StageJob(arm, job.stage, job.task, out, {**job.metadata, "ema_decay": decay,
                                                     "ema_of": job.arm.name})


def arm_context(s: Session, job: StageJob, model: nn.Module, optimizer, total: int) -> Context:
    """What an arm builds its loss and hooks from, for the job's task."""
    runner, train = s.runners[job.task], s.tasks[job.task].train
    return Context(model, optimizer, total, runner.loss, runner.objective,
                   lambda: (train.x, train.y))


def old_task(s: Session) -> OldTask | None:
    """The old task's loss and training data, for an arm that needs them (None: no data)."""
    old_train = s.tasks["old"].train
    if len(old_train) == 0:
        return None
    return OldTask(s.runners["old"].loss, old_train.x, old_train.y, s.recipe.finetune.batch_size,
                   s.seed)


def ema_records(records: list[dict]) -> list[dict]:
    """The arm's records with the EMA's metrics in place of the arm's."""
    return [{**{k: v for k, v in r.items() if k not in ("ema", "val")}, **r["ema"]} for r in records
            if "ema" in r]


def _finish(s: Session, model: nn.Module, optimizer, job: StageJob, ran: Ran) -> RunResult:
    """Check the trained model is finite, evaluate it, and write the arm's files (rank 0)."""
    st, records, (n_train, batch_size) = ran.st, ran.records, ran.sizes
    arm, out = job.arm, job.out
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # e.g. nonfinite: skip could not save a run whose weights already blew up
        raise Diverged(st.batch, f" of {arm.name}: weights {bad[0]!r} (and {len(bad) - 1} more) "
                                 "are not finite; no checkpoint was written",
                       what="training ended with a non-finite model")
    final, preds, val, val_preds = ran.measured or s.measure(model)
    nan_metrics = [f"{t} {m}" for t, d in final.items() for m, v in d.items() if v != v or
                   v in (float("inf"), float("-inf"))]
    if nan_metrics:
        raise Diverged(st.batch, f" of {arm.name}: {nan_metrics[0]} is not finite; "
                                 "no checkpoint was written",
                       what="training ended with a non-finite model")
    _, world, _ = dist_info()
    summary = {"name": arm.name, "kind": arm.kind, "optimizer": describe_optimizer(optimizer),
               "batches": st.batch, "main_updates": main_steps(optimizer, st.batch),
               "epochs": round(st.batch / batches_per_epoch(n_train, batch_size), 4),
               "wall_s": round(st.wall_s, 3), "seed": s.seed, "device": str(s.device),
               "metrics": final, "val_metrics": val}
    extra = dict(ran.summary)
    summary.update({k: extra.pop(k) for k in ("replay", "cycles") if k in extra})
    if world > 1:
        summary["world_size"] = world
    if st.skipped:
        summary["skipped_nonfinite"] = st.skipped
    summary.update(extra)
    result = RunResult(arm.name, out, final, preds, records, summary, val_preds)
    if dist_info()[0] != 0:
        return result
    meta = {**job.metadata, "arm": arm.name, "optimizer": summary["optimizer"],
            "batches": st.batch, "main_updates": summary["main_updates"], "metrics": final}
    if recorded(model) is not None:
        meta["input"] = recorded(model)  # what eval, compare and a later fine-tune feed it
    keep_previous(out / "model.safetensors")
    ckpt.save_model(out / "model.safetensors", model.state_dict(), meta)
    save_predictions(out / "predictions.safetensors", preds)
    save_predictions(out / "val_predictions.safetensors", val_preds, "validation")
    summary["checkpoint"] = str(out / "model.safetensors")
    summary["sha256"] = sha256_file(out / "model.safetensors")
    summary["files_sha256"] = {f: sha256_file(out / f)  # what compare may reuse, checked first
                               for f in ("predictions.safetensors", "val_predictions.safetensors",
                                         "metrics.jsonl")
                               if (out / f).exists()}
    write_json(out / "summary.json", summary)
    for f in state_files(out):
        f.unlink(missing_ok=True)
    return result
