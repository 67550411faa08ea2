"""`goodfit finetune`: fine-tune the base on the NEW task with each arm, then report and gate.

The run folder (see goodfit_cli.io.rundir) holds the recipe as run, run.json, the base's
metrics and predictions, one folder per arm and the report. `--resume RUN` continues an
interrupted run from its own run.json and recipe.yaml (workflows/resume.py `resume_job`).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from goodfit_cli import __version__
from goodfit_cli.core.distributed import finish, is_main, stop_on_signals
from goodfit_cli.core.errors import Diverged, Interrupted, UserError
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.core.timing import TRAINING, Phases, earlier, merged
from goodfit_cli.data import sampling
from goodfit_cli.data.validation import split_lines
from goodfit_cli.io.atomic import atomic_write, sha256_file, write_json
from goodfit_cli.io.outputs import check_outputs
from goodfit_cli.io.rundir import RunResult, beside_run, load_result, relocated
from goodfit_cli.io.rundir import devices_used, note_diverged, save_predictions, tidy
from goodfit_cli.io.runlock import held, open_run
from goodfit_cli.models import own_head
from goodfit_cli.objectives import recomputed, shown
from goodfit_cli.recipe import Recipe
from goodfit_cli.report.gate import Gate, describe, gate_record, recorded_gate, units_of
from goodfit_cli.report.margin import base_against_gate
from goodfit_cli.report.splits import carved_elsewhere, validation_gap
from goodfit_cli.trainer.measured import base_key, first_time, measure_base, measured_once
from goodfit_cli.trainer.measured import measured_on, measured_ons
from goodfit_cli.trainer.runcheck import check_resumed_run, claim_stage, data_record, run_identity
from goodfit_cli.trainer.session import (
    Place,
    adopt_base_inputs,
    adopt_base_model,
    base_mismatch,
    folder_of,
    load_checkpoint,
    open_session,
)
from goodfit_cli.trainer.stage import StageJob, Ui, quiet, run_stage
from goodfit_cli.training import check_arms_on, parse_arm
from goodfit_cli.training.checks import check_stages
from goodfit_cli.training.early_stop import stop_rule
from goodfit_cli.workflows.reporting import base_head_record, carried, class_names, losses
from goodfit_cli.workflows.reporting import make_report, provenance
from goodfit_cli.workflows.timings import evaluation_hint, unfinished
from goodfit_cli.workflows.wise import wise_curve


@dataclass
class FinetuneJob:
    """One `goodfit finetune`: what to fine-tune from where, and what to write."""

    recipe: Recipe
    base: Path
    out: Path
    arms: list[str] | None = None  # default: the recipe's finetune.arms
    resume: bool = False  # continue the run in `out`
    overwrite: bool = False  # write into a non-empty `out`
    wise: bool = True  # the WiSE-FT interpolation curve of each arm
    gate: Gate | None = None
    junit: Path | None = None
    margin: float = 0.0  # the validation margin the gate is read with (a search's --val-margin)
    notes: list[str] = field(default_factory=list)  # what a resume found moved with the run


def _loaded(reused: dict[Path, RunResult], folder: Path, name: str) -> RunResult:
    """A finished arm as the resume's check loaded it (each file hashed once), when it is the
    arm the run expects there; else loaded (and refused) here."""
    done = reused.get(folder)
    return done if done is not None and done.name == name else load_result(folder, recomputed, name)


def _earlier(job: FinetuneJob) -> dict[str, Any]:
    """What a resumed run's earlier commands recorded in run.json ({} for a fresh run, or one
    whose run.json cannot be read: check_resumed_run refuses that one)."""
    try:
        saved = json.loads((job.out / "run.json").read_text()) if job.resume else {}
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def finetune(job: FinetuneJob, place: Place | None = None, ui: Ui | None = None) -> dict[str, Any]:
    """Fine-tune every arm from the base on the new task; write checkpoints and the report.

    Holds the run folder's lock throughout (rank 0); `--overwrite` moves the old content aside.
    Returns the report (an empty dict on ranks other than 0)."""
    ui = ui or Ui()
    check_stages(job.recipe, job.arms)  # a bad optimizer or schedule: before anything is written
    check_outputs({"--junit": job.junit}, {"--out": None if job.resume else job.out},
                  {"--base": job.base}, {"--resume": job.out if job.resume else None})
    if job.resume and job.recipe.finetune.early_stop.gate:
        was = json.loads((job.out / "run.json").read_text()).get("gate")
        if was is not None and was != gate_record(job.gate):
            raise UserError(f"--resume {job.out}: its arms stop early by the gate they ran with "
                            f"({describe(recorded_gate(was, 'run.json: gate'))}); another gate "
                            "would stop the rest by another rule: drop the gate flags, or start "
                            "a new run")
    lock = None
    if is_main():
        lock, moved = open_run(job.out, overwrite=job.overwrite, resume=job.resume)
        if moved is not None:
            ui.log(f"--overwrite: the previous content of {job.out} was moved to {moved} (kept)")
    phases = Phases()  # where the command's time goes (run's timings.json, the report)
    with held(lock, ui.log), measured_once():
        try:
            return _finetune(job, place, ui, phases)
        except BaseException as e:  # interrupted, pruned, diverged: the time it spent is kept
            if is_main() and not isinstance(e, UserError) and (job.out / "run.json").is_file():
                unfinished(job, phases, e)  # (a refused or failed command changes no file)
                if isinstance(e, KeyboardInterrupt):  # past the arms' signal handling (WiSE,
                    raise Interrupted(getattr(e, "signum", signal.SIGINT), job.out,  # report)
                                      f"the same command plus --resume {job.out}") from None
            raise


def _finetune(job: FinetuneJob, place: Place | None, ui: Ui, phases: Phases) -> dict[str, Any]:
    recipe, out = job.recipe, job.out
    had = _earlier(job)  # before run.json is rewritten
    # the recipe's hash as the run's first command recorded it: a resume reads the run's own
    # recipe.yaml, whose data_dir and finetune.arms are the run's, so it hashes otherwise
    recipe_sha = had.get("recipe_sha256")
    recipe_sha = recipe_sha if isinstance(recipe_sha, str) else recipe.sha256
    diverged = had.get("diverged") if isinstance(had.get("diverged"), dict) else {}
    rule = stop_rule(recipe.finetune.early_stop, recipe.primary["new"], job.gate,
                     recipe.at("finetune.early_stop"), recipe.loss_of)
    main_rank = is_main()
    ui = ui if main_rank else Ui(quiet)  # only rank 0 speaks
    for line in job.notes:
        ui.log(line)
    geometry = adopt_base_inputs(recipe, job.base)  # before the data is read: its size, crop
    if geometry:
        ui.log("inputs: " + ", ".join(f"{k} {v}" for k, v in geometry.items())
               + f" from the model folder {job.base}")
    s = open_session(recipe, place)
    for t in ("old", "new"):  # thin classes, shared samples: said once, before training
        for line in split_lines(t, s.validation.get(t) or {}, class_names(s).get("class_names")):
            if first_time(line):  # a search's trials: once
                ui.log(line)
    drawn = recipe.finetune.sampling  # class-balanced batches need labels: refused before training
    sampled = (sampling.describe(sampling.labels_of(s.tasks["new"].train,
                                                    recipe.at("finetune.sampling")), drawn, s.seed)
               if drawn != "uniform" else None)
    arm_names = job.arms or recipe.finetune.arms
    parsed = [parse_arm(a, recipe.finetune) for a in arm_names]
    adopted = adopt_base_model(recipe, job.base, s.tasks)
    if adopted:
        ui.log(adopted)
    model = s.model()
    loaded = load_checkpoint(model, job.base, recipe.key_map, where=recipe.at("checkpoint.key_map"),
                             grow_rows=s.kinds["new"] == "classification")
    for msg in loaded.messages:
        ui.log(msg)
    check_arms_on(parsed, recipe.finetune, model)  # e.g. LoRA's targets: before any write
    identity = run_identity(recipe, s.seed, loaded.sha256, __version__, arm_names)
    read = data_record(s)  # the data it reads, as run.json records it
    reused: dict[Path, RunResult] = {}  # finished arms, checked and loaded once
    if main_rank and job.resume:  # before anything in the run is rewritten
        reused = check_resumed_run(out, identity, ui.log,  # and the data, its finished arms'
                                   [out / f"{a.dirname}{e}" for a in parsed
                                    for e in ("", "+ema")], measured_ons(s, model), read)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    phases.add("load", time.perf_counter() - phases.start)
    with phases.phase("base_evaluation"), own_head(model, loaded.head_changes) as base_head:
        key = base_key(s, model, loaded, base_head, recipe.key_map)  # once per command
        base_metrics, base_preds, base_val, base_val_preds = measure_base(s, model, key)
    head_record = base_head_record(loaded.head_changes, base_head)
    mismatch = base_mismatch(loaded, base_metrics["old"], recipe.primary["old"],
                             s.validation)  # not on another old task (an update's update)
    if mismatch:
        ui.log(mismatch)
    gap = carved_elsewhere(loaded.validation, s.validation) or validation_gap(  # what it saw
        base_preds, base_val_preds, recipe.primary["old"],
        (s.validation.get("old") or {}).get("source") == "carved")
    if gap and first_time(gap["message"]):
        ui.log(gap["message"])
    against = base_against_gate(job.gate, (base_metrics, base_preds, base_val, base_val_preds),
                                job.margin, units_of(job.gate, recipe.loss_of))  # provenance
    outside = against.get("base_outside_gate")  # on validation: said once per command
    if outside and first_time(outside["message"]):
        ui.log(outside["message"])
    if head_record and base_head != "exact":
        ui.log(f"base measured with {head_record['measured_with']}")
    if main_rank:
        # recipe.yaml first: a run.json (what --resume looks for) always has its recipe beside
        # it, even after a crash between the two. The recipe's own data_dir is resolved against
        # its file, and --resume reads the copy in `out`: record the resolved one.
        read_from = folder_of(s.data_dir)  # what relative paths read, absolute
        for d in (out, out / "base", *(out / f"{a.dirname}+ema" for a in parsed)):  # what a
            tidy(d)  # process killed mid-write left (never renamed); EMA folders too
        atomic_write(out / "recipe.yaml", recipe.to_yaml(arm_names, read_from))
        where = str(job.base.resolve())  # absolute: a relative path would depend on the cwd
        near = {f"{k}_relative": r for k, v in (("base", where), ("data_dir", read_from))
                if (r := beside_run(out, v)) is not None}  # a project folder moved whole
        write_json(out / "run.json", {"base": where, "arms": arm_names, "seed": s.seed, **near,
                                       "recipe_sha256": recipe_sha,
                                       **devices_used(had, str(s.device)),
                                       "data_dir": read_from, "data": read,
                                       "identity": identity, "validation": s.validation,
                                       "gate": gate_record(job.gate),
                                       # periodic evaluations: the curves' split (eval.curves)
                                       "curves_split": "test" if recipe.curves_on_test else "val",
                                       "wise": job.wise,  # --no-wise: a resume keeps it off
                                       "losses": losses(recipe),  # a class balance with them
                                       **({"sampling": sampled} if sampled else {}),
                                       "input": {**(loaded.input or {"source": "as stored"}),
                                                 **({"from_config": geometry} if geometry
                                                    else {})},
                                       **({"input_warning": mismatch} if mismatch else {}),
                                       **({"validation_gap": gap} if gap else {}),
                                       **({"base_outside_gate": outside} if outside else {}),
                                       **({"preprocessing": s.tasks["old"].preprocessing}
                                          if s.tasks["old"].preprocessing else {}),
                                       **({"base_head": head_record} if head_record else {}),
                                       **({"diverged": diverged} if diverged else {})})
        for a, line in diverged.items():  # an earlier command's, until the arm finishes
            ui.log(f"{a}: diverged in an earlier command of this run ({line})"
                   + ("" if a in arm_names else "; not among this command's arms"))
        (out / "base").mkdir(exist_ok=True)
        save_predictions(out / "base" / "predictions.safetensors", base_preds)
        save_predictions(out / "base" / "val_predictions.safetensors", base_val_preds,
                         "validation")
        write_json(out / "base" / "metrics.json", {
            "checkpoint": where, **({"checkpoint_relative": near["base_relative"]} if
                                    "base_relative" in near else {}),
            "sha256": loaded.sha256, "metrics": base_metrics,
            "val_metrics": base_val, "measured_on": measured_on(s, model),
            "files_sha256": {f: sha256_file(out / "base" / f) for f in
                             ("predictions.safetensors", "val_predictions.safetensors")}})
    said = "base (test): " + "  ".join(f"{t} " + ", ".join(f"{m} {shown(m, v, recipe.loss_of(t))}"
                                       for m, v in d.items()) for t, d in base_metrics.items())
    if first_time(said):  # a search's trials measure one base: said once
        ui.log(said)
    meta = {"goodfit_version": __version__, KEY: source_sha256(), "recipe": recipe.name,
            "recipe_sha256": recipe_sha, "base_sha256": loaded.sha256, "stage": "finetune",
            **carried(s, loaded)}
    if rule is not None:  # the gate's limits are watched against the base, on validation
        rule = replace(rule, base=base_val, base_old=base_val_preds["old"])
    results: list[RunResult] = []
    t_start = time.perf_counter()
    here = relocated if main_rank else (lambda done: done)  # a reused arm of a moved run folder
    with stop_on_signals() as stop:
        for arm in parsed:
            arm_dir = out / arm.dirname
            ema_dir = out / f"{arm.dirname}+ema"  # training.arm_dirname of '<arm>+ema'
            if (arm_dir / "summary.json").exists() and (arm_dir / "model.safetensors").exists():
                if main_rank:  # reused only if this very run made it
                    claim_stage(arm_dir, recipe, s.seed, arm.name, meta, ui.log, model)
                    tidy(arm_dir, states=True)  # a kill after its summary: states, temps
                results.append(here(_loaded(reused, arm_dir, arm.name)))
                if (ema_dir / "summary.json").exists():
                    results.append(here(_loaded(reused, ema_dir, f"{arm.name}+ema")))
                ui.log(f"{arm.name}: already finished, reusing {arm_dir}")
                stop.stop_here(out, f"the same command plus --resume {out}", s.device)
                continue
            model.load_state_dict(base_state)
            for p in model.parameters():
                p.requires_grad_(True)
            torch.manual_seed(s.seed)
            t_arm, eval_before, state_before = time.perf_counter(), s.eval_s, s.state_s
            try:
                stage = StageJob(arm, recipe.finetune, "new", arm_dir, meta, rule,
                                 base_val_preds=base_val_preds,  # a rung's flips: against it
                                 base_state=base_state)  # a rung's curve: from it
                results.append(run_stage(s, model, stage, stop, ui))
                if (ema_dir / "summary.json").exists():
                    results.append(load_result(ema_dir, recomputed, f"{arm.name}+ema"))
                if main_rank and arm.name in diverged:  # it finished this time
                    note_diverged(out, arm.name, None)
                stop.stop_here(out, f"the same command plus --resume {out}", s.device)  # all ranks
            except Diverged as e:  # named in run.json: a resume without the arm still says it
                if main_rank:  # what and when, not where its last state is (a path)
                    note_diverged(out, arm.name, str(e).split("; ")[0])
                raise
            except Interrupted as e:
                e.resume = f"the same command plus --resume {out}"
                raise
            finally:  # an arm cut short (interrupted, pruned) counts what it trained too
                evaluations = s.eval_s - eval_before  # periodic and final evaluations
                saves = s.state_s - state_before  # what its resumable states held it up
                phases.add("evaluations", evaluations, arm.name)
                phases.add("state_saves", saves, arm.name)
                phases.add(TRAINING, time.perf_counter() - t_arm - evaluations - saves, arm.name)
    if not main_rank:
        finish()  # waits for rank 0's report, then leaves the group
        return {}
    # the α = 0 point is the base as loaded: its measurement, when the head was not changed
    at_base = None if loaded.head_changes else (base_metrics, base_val)
    points = None if loaded.head_changes else key  # a chosen point kept for `goodfit wise`
    zero: dict = {}  # else α = 0, the same model for every arm: measured once
    with phases.phase("wise"):
        wise_curves = ({r.name: phases.timed(r.name, "wise", wise_curve, s, model, base_state, r,
                                             at_base, base_val, job.gate, recipe.wise_alphas,
                                             points, zero, job.margin,
                                             (base_preds, base_val_preds))
                        for r in results}
                       if job.wise else {})
    model.load_state_dict(base_state)
    prov = provenance(recipe, s, loaded.sha256) | {"wall_s": round(time.perf_counter() - t_start, 3)}
    prov.update(validation=s.validation, **devices_used(had, str(s.device)))  # a resume's too
    prov["recipe_sha256"] = recipe_sha  # every arm's, as the run's first command recorded it
    gone = {a: line for a, line in diverged.items() if a not in arm_names}  # left out: named
    prov.update({"diverged": gone} if gone else {})
    prov.update(losses=losses(recipe), **({"sampling": sampled} if sampled else {}))
    prov.update({"base_head": head_record} if head_record else {})
    prov["input"] = loaded.input or {"source": "as stored"}
    if mismatch:
        prov["input_warning"] = mismatch
    if gap:
        prov["validation_gap"] = gap
    prov.update(against)  # the base outside the gate on validation, on test (reported only)
    if recipe.finetune.replay is not None:  # each arm's summary has the pool and batch shares
        prov["replay"] = {"fraction": recipe.finetune.replay.fraction,
                          "max_samples": recipe.finetune.replay.max_samples, "seed": s.seed}
    before = earlier(out / "timings.json") if job.resume else None  # a resumed run's others
    prov["timings"] = merged(before, phases.record())  # the report's own: RUN/timings.json
    try:
        with phases.phase("report"), phases.counting():  # the bootstrap: a phase of its own
            report = make_report(recipe, out, job.base,
                                 (base_metrics, base_preds, base_val, base_val_preds), results,
                                 wise_curves, s.kinds, prov, gate=job.gate, junit=job.junit,
                                 sample_ids=s.sample_ids, margin=job.margin)
    finally:
        finish()
    now = phases.record()
    record = merged(before, now)
    write_json(out / "timings.json", record)
    ui.log(phases.line(now))
    hint = evaluation_hint(record, recipe.eval_every,
                           len(recipe.wise_alphas) - 2 if job.wise else None,
                           recipe.finetune.steps)
    if hint:
        ui.log(hint)
    return report
