"""One training run (a pretrain, or one fine-tuning arm): model + arm + stage -> an arm folder.

Builds the arm's batch source, optimizer, scheduler and callbacks (its training features:
training/callbacks.py), resumes from the newest resumable state and drives the engine through
`StageHooks` (trainer/hooks.py: evaluation, states, stop requests); trainer/finish.py then
checks the result is finite and writes the arm's files (model, predictions, metrics,
summary). Under torchrun the model trains wrapped in DistributedDataParallel; only rank 0
writes and speaks. The job, the Ui and what a run did are trainer/job.py's.
"""

from __future__ import annotations

import hashlib
import json
import signal
from typing import Any, Callable

import torch
from torch import nn

from goodfit_cli.arms import Context, OldTask
from goodfit_cli.core.distributed import StopFlag, dist_info
from goodfit_cli.core.errors import Diverged, Interrupted, UserError
from goodfit_cli.data import sampling
from goodfit_cli.data.replay import describe, mix
from goodfit_cli.data.sources import source_of
from goodfit_cli.engine import LoopConfig, LoopState, batches_per_epoch, train
from goodfit_cli.io.rundir import RunResult, devices_used, newest_state, read_jsonl, state_files
from goodfit_cli.objectives import direction
from goodfit_cli.report.verdict import point_measure
from goodfit_cli.trainer.finish import ema_job, ema_records, finish
from goodfit_cli.trainer.hooks import Recording, StageHooks, callbacks_for, saved_callbacks
from goodfit_cli.trainer.job import Log, Ran, StageJob, Ui, quiet
from goodfit_cli.trainer.runcheck import claim_stage, data_record, state_identity
from goodfit_cli.trainer.session import Session
from goodfit_cli.training import (
    arm_training,
    build_optimizer,
    build_scheduler,
    cycle_length,
    finish_arm,
    finish_cycle,
    stage_for_arm,
    whole_cycles,
)
from goodfit_cli.training.callbacks import Ema, end_batch, end_weights, load_states
from goodfit_cli.training.checks import check_compiler

# what workflows and tests import from here
__all__ = ["Log", "StageJob", "Ui", "quiet", "run_stage", "saved_callbacks", "total_batches"]


def nonfinite_inputs(s: Session, tasks: tuple[str, ...]) -> str | None:
    """Which task's training inputs held in memory have a NaN or Inf ("the new task's training
    inputs have 1 sample(s) with a NaN or Inf"), or None: a diverged loss's cause when the
    data, not the learning rate, is what is not finite. `tasks`: those the batches drew on."""
    for t in tasks:
        x = getattr(s.tasks[t].train, "x", None)
        for v in (x.values() if isinstance(x, dict) else [x]):
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
                bad = ~torch.isfinite(v.reshape(len(v), -1)).all(dim=1)
                if bool(bad.any()):
                    return (f"the {t} task's training inputs have {int(bad.sum())} sample(s) "
                            "with a NaN or Inf")
    return None


def with_loss(metrics: dict, preds: dict) -> dict:
    """`metrics` with each task's mean per-sample loss as "loss" where the objective measures
    one and the metrics do not already have it (a continuous signal beside a flat metric)."""
    out = {}
    for t, m in metrics.items():
        per = (preds.get(t) or {}).get("per_sample") or {}
        out[t] = m if "loss" in m or "loss" not in per else {
            **m, "loss": float(per["loss"].double().mean())}
    return out


def rung_evaluation(s: Session, base: nn.Module, flips: bool, at_base: dict | None,
                    known: Callable[[nn.Module], Any] = lambda m: None) -> Any:
    """A model's validation metrics (`with_loss`) for the search's rungs; with `flips` (a gate
    on flip rates), each task's flips against the base's validation predictions (`at_base`,
    measured once per command; else `base` evaluated now, before training), which a rung's gate
    reads as the search does (without them every point failed a flip-rate limit alike).
    `known(m)`: the training's last evaluation of `m` (StageHooks.measured: None unless `m`
    holds exactly the weights it measured), whose validation pass is then not made again."""
    if flips and at_base is None:
        at_base = s.evaluate(base, True, split="val")[1]

    def evaluate(m: nn.Module) -> dict:
        last = known(m)
        metrics, preds = (last[2], last[3]) if last is not None and last[2] is not None else (
            s.evaluate(m, True, split="val"))
        evaluate.last = ({t: dict(v) for t, v in metrics.items()}, preds)  # as measured
        return with_loss(metrics, preds) | (
            {"flips": point_measure(at_base, preds, s.kinds)[0]} if flips else {})
    evaluate.last = None
    return evaluate


def holds(model: nn.Module, state: dict[str, torch.Tensor] | None) -> bool:
    """Whether `model` holds exactly `state`'s tensors (names, shapes and values)."""
    own = model.state_dict()
    return state is not None and own.keys() == state.keys() and all(
        own[k].shape == v.shape and torch.equal(own[k], v) for k, v in state.items())


def total_batches(budget: dict[str, Any], n: int, accumulate: int = 1, world: int = 1) -> int:
    """Optimizer steps in the budget (an epoch is n samples in steps of batch_size x accumulate,
    each split over `world` ranks)."""
    if budget.get("steps"):
        return int(budget["steps"])
    return int(budget["epochs"]) * batches_per_epoch(n, budget["batch_size"] * accumulate,
                                                     world)


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
    drawn = job.stage.sampling if job.task == "new" else "uniform"  # class balance: new task
    new = sampling.weighted(data, drawn, s.recipe.at("finetune.sampling"))
    source, replayed = source_of(new), None
    if job.stage.replay is not None and job.task == "new":  # old-task samples in every batch
        source = mix(new, s.tasks["old"].train, job.stage.replay, budget["batch_size"], s.seed,
                     s.recipe.at("finetune.replay"))
        replayed = describe(source, job.stage.replay, s.seed)
    new_per_batch = budget["batch_size"] - (replayed["old_per_batch"] if replayed else 0)
    asked = total_batches({**budget, "batch_size": new_per_batch}, len(data),
                          job.stage.accumulate, world)
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
    watch = ui.events(arm.name) if main_rank else None
    # the watch's curves mix from the WiSE-FT grid's own base (finetune's) unless the arm
    # changed the model before training (LoRA's adapters): then its end curve is not reused
    fresh = hasattr(watch, "measured_end") and holds(model, job.base_state)
    if hasattr(watch, "bind"):  # the search's pruning watch measures the model at its rungs
        watch.bind(model, rung_evaluation(s, model, getattr(watch, "wants_flips", False),
                                          job.base_val_preds, lambda m: hooks.measured(m)),
                   {t: len(s.tasks[t].val.y) for t in ("old", "new")},
                   lambda: end_weights(model, optimizer, callbacks),  # what it would end
                   # with now: early stopping's best, else the anchor (never GoodFit's
                   # displaced weights); and the EMA's averaged copy, a candidate of its own
                   lambda: [c.module for c in callbacks if isinstance(c, Ema)],
                   lambda: end_batch(callbacks))  # the batch of those weights
    cfg = LoopConfig(total, budget["batch_size"], min(s.recipe.eval_every, total), s.seed,
                     s.recipe.checkpoint_every, rank, world, s.recipe.nonfinite,
                     job.stage.accumulate, job.stage.clip.norm, job.stage.clip.value)
    if s.recipe.compile:
        check_compiler(s.device)
    trained = torch.compile(model) if s.recipe.compile else model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    loop_state = None
    records: list[dict] = []
    if main_rank:  # only this run's own states are resumed
        claim_stage(out, s.recipe, s.seed, arm.name, job.metadata, log, model, data_record(s))
    own = state_identity(s.recipe, s.seed, arm.name, job.metadata, model)  # what its states record

    def restore(saved: dict) -> None:  # raises on a state that does not fit: an older one is tried
        if saved.get("identity") not in (None, own):  # None: an older goodfit recorded none
            raise UserError("written by another run (another base, recipe, seed or arm)")
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
    settler = watch.settler() if hasattr(watch, "settler") else None
    if settler is not None:  # the search's: a rung's weights, when better than the end's, after
        callbacks.append(settler)  # every other callback's (early stopping's best) on_end
    hooks = StageHooks(s, model, optimizer, scheduler, job, stop, records, callbacks, own)
    if saved is not None:  # trained on another device before (a resume on another --device)
        hooks.devices = devices_used(saved, str(s.device))
    events = Recording(hooks, watch)
    try:
        with hooks.states_written():  # the states are written behind the training
            st = train(trained, optimizer, scheduler, source, loss, cfg, hooks,
                       events=events, state=loop_state)
    except Diverged as e:
        kept = state_files(out)
        where = f"; the last good state is {kept[-1]}" if kept else "; no state was saved yet"
        # looked for only now (no cost to a run that trains), in the tasks the batches drew on
        bad = nonfinite_inputs(s, ("new", "old") if replayed else ("new",))
        why = (f"{bad}: remove them, or set nonfinite: skip in the recipe" if bad else
               "lower the learning rate, or set nonfinite: skip in the recipe")
        raise Diverged(e.batch, f" of {arm.name}{where} ({why})") from None
    if st.batch < total and not any(c.should_stop() for c in callbacks):
        raise Interrupted(stop.signum or signal.SIGINT, out)  # the state is saved, nothing else
    model.zero_grad(set_to_none=True)  # the last step's gradients, a model's size: nothing
    # after the training reads them (finish, WiSE-FT, the next arm, a search's next trial)
    summary: dict[str, Any] = {k: v for k, v in hooks.devices.items() if k == "devices"}
    if replayed:
        summary["replay"] = replayed
    if drawn != "uniform":
        summary["sampling"] = sampling.describe(sampling.labels_of(data, ""), drawn, s.seed)
    cycles = {"batches_per_cycle": cycle_length(optimizer), "budget_asked": asked,
              "budget_ran": total, "partial_cycle_dropped": finish_cycle(optimizer)}
    if cycles["batches_per_cycle"] > 1:
        summary["cycles"] = cycles
    for c in callbacks:  # early stopping puts its best evaluation's weights in the model
        summary.update(c.on_end(model))
    sizes = (len(data), new_per_batch * job.stage.accumulate, world)  # new samples per step,
    # the ranks each is split over
    ema = next((c for c in callbacks if isinstance(c, Ema)), None)
    # the models to ship, as the arm makes them (LoRA: adapters merged, the base's layers back)
    summary.update(finish_arm(arm, job.stage, *([ema.module] if ema else []), model))
    if ema is not None:  # the averaged weights: a candidate of their own, written first
        finish(s, ema.module, optimizer, ema_job(job, records, decay),
                Ran(st, ema_records(records), sizes, {k: v for k, v in summary.items()
                                                       if k != "early_stop"}))
    # the end weights' curve the watch measured (a kept rung compared with them), when the
    # model still holds those weights: its α = 1 is the finish's validation measurement, its
    # other points the WiSE-FT grid's (measured once, not again)
    curve = watch.measured_end(model) if hasattr(watch, "measured_end") else None
    measured = hooks.measured(model)
    if measured is None and curve and 1.0 in curve:
        measured = (None, None, *curve[1.0])  # finish measures test only
    result = finish(s, model, optimizer, job, Ran(st, records, sizes, {**summary, **job.summary},
                                                  measured))
    if fresh and curve:
        result.val_curve = {a: p for a, p in curve.items() if a != 1.0}
    return result


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
    r = s.recipe  # what decides the loss besides the model and the rows (arms/terms.py)
    loss_key = hashlib.sha256(json.dumps(
        [r.old_task.loss, r.old_task.metrics, r.old_task.args, r.data.name, r.data.args,
         r.precision, str(s.device)], sort_keys=True, default=str).encode()).hexdigest()
    return OldTask(s.runners["old"].loss, old_train.x, old_train.y, r.finetune.batch_size,
                   s.seed, loss_key)


