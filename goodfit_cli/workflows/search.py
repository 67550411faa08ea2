"""`goodfit search`: find the update that breaks the least, with Optuna.

A multi-objective study (each task's primary metric, in its own direction) over arms and their
knobs (arms/search.py, from each arm's declaration), the gate a constraint (a trial's number of
violated limits; 0 is feasible). Each trial is a fine-tuning run in RUN/trials/trial-NNNN with its
arm's WiSE-FT curve; the best α the gate allows on validation, with its new-class offset
(workflows/offset.py), is the trial's candidate (RUN/trials/trial-NNNN/wise when not the
arm itself), never drawn as a knob; with finetune.ema, of the arm or its '<arm>+ema', whichever
point is best (report/trials.py best_candidate; the knob `candidate` says which). The study
lives in RUN/study.db (SQLite) unless `storage` names another database: any number of
workers, on any machines, run the same command with the same storage and share one study; a
re-run continues it. After its trials a worker writes
RUN/report.{json,md,html} from the whole study (workflows/search_report.py) and exports the
recommendation (by `--rule`, among the trials that pass the gate and gain on the new task) to
RUN/recommended/model.safetensors with its provenance.

The recipe's default arms are the study's first trials (enqueued once, by the worker that
creates the study): counted toward --trials and the budget, and the report's reference points.
`--budget` caps what the study trains, in fine-tunes, through claims in the study's storage
(workflows/budget.py): a trial starts only if the budget left covers it whole, and is promoted
past a rung only if it covers the rest of it; the study stops short of --trials when spent.

A trial is pruned early (workflows/pruning.py: successive halving on its periodic validation
results, gate-aware) when it is not among the best at a rung; a pruned trial counts toward
--trials. With `reruns` (--reruns; off by default), the budget left once --trials are done goes to
re-running pruned trials whole (workflows/study.py `rerun_candidate`: the latest rung reached, the
best value there first; the same knobs and seed, so the same training up to the rung), each a trial
of its own marked `rerun_of`, never pruned and not counted toward --trials. No trial is spent on
the base's own point: lr is drawn around the recipe's (> 0), WiSE α = 0 is never a candidate, and a
WiSE point (or arm) whose new-task metric is no better than the base's is neither kept as α nor
recommended (it counts as a violated limit to the sampler).

Every choice is made on the VALIDATION splits: a trial's objectives are its validation metrics, its
feasibility the gate judged on validation, and the recommendation is chosen among them; each
trial's test numbers are stored beside them and reported, never used to choose. Each trial keeps
its validation and test views (metrics, changes, flips) in the study, and the gate and margin its
point was chosen under, so the report judges every finished trial with the gate of THIS command: a
re-run with another gate or margin first chooses each trial's point again under it
(workflows/rejudge.py: evaluations only), then re-judges all of them and the recommendation (and
says so). A trial interrupted (a signal, in its training or after) is not counted and is enqueued
again with its knobs, so the next run runs it first.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from goodfit_cli.core.distributed import dist_info
from goodfit_cli.core.errors import Diverged, Interrupted, UserError
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.core.timing import Phases
from goodfit_cli.objectives import direction
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.hubdir import resolve_base, weights_sha256
from goodfit_cli.io.outputs import check_outputs
from goodfit_cli.io.runlock import make_out, turns
from goodfit_cli.report.gate import Gate, units_of
from goodfit_cli.report.margin import DEFAULT_Z
from goodfit_cli.report.front import Rule
from goodfit_cli.report.search import write_search_report
from goodfit_cli.report.trials import best_candidate, ema_label, gained, judge, pick, val_counts
from goodfit_cli.arms.search import propose
from goodfit_cli.trainer.session import Place, open_session
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.training import arm_dirname
from goodfit_cli.workflows.budget import Budget, claim, settle, spent, trained
from goodfit_cli.workflows.finetune import FinetuneJob, finetune
from goodfit_cli.workflows.halving import Halving
from goodfit_cli.workflows.pruning import PruneWatch, Pruned, watching
from goodfit_cli.workflows.recipes import load
from goodfit_cli.workflows.rejudge import chosen_under, rechosen_all, views_of
from goodfit_cli.workflows.search_report import default_curves, study_report
from goodfit_cli.workflows.study import counted, enqueue_defaults, open_study, reclaim_dead, reran
from goodfit_cli.workflows.study import but_gate, enqueued_as, requeue_first, reruns_due, retry_of
from goodfit_cli.workflows.study import a_study, data_identity, mark_worker
from goodfit_cli.workflows.timings import search_record
from goodfit_cli.workflows.wise import WiseJob, wise


@dataclass
class SearchJob:
    """One `goodfit search` worker: what to search, from which base, into which run folder."""

    recipe: str  # a shipped recipe's name or a YAML path
    base: Path
    out: Path
    trials: int  # the study's target number of finished (or running) trials
    overrides: list[str] = field(default_factory=list)
    storage: str | None = None  # an Optuna RDB URL; default sqlite:///RUN/study.db
    study: str | None = None  # default: goodfit-<recipe name>
    seed: int = 0  # the sampler's seed (each trial's draw: it and the trial's place)
    gate: Gate | None = None
    defaults: bool = True  # the recipe's default arms are the study's first trials
    replay: bool = True  # search the replay fraction; False: no trial replays old-task data
    rule: Rule = field(default_factory=Rule)  # how the recommendation is picked
    prune: Halving = field(default_factory=Halving)  # Halving(rungs=0): no pruning
    margin: float = DEFAULT_Z  # the gate on validation: rate limits z standard errors inward
    budget: float | None = 10.0  # the study's compute in fine-tunes (None: unlimited)
    reruns: bool = False  # the budget left after --trials re-runs the best pruned trials whole
    new_offset: bool = True  # each trial's point may shift its new classes' logits (offset.py)
    with_alpha: bool = False  # its α chosen together with that offset (choose_with_alpha; opt-in)
    reference: bool = True  # after the default arms, the replay reference (replay_reference)
    rung_weights: bool = True  # a trial may end with a rung's weights (pruning.py PruneWatch)
    fisher: bool = True  # its α chosen with a weighting by the old task's Fisher (fisher.py)


def _run_trial(job: SearchJob, trial: Any, place: Place, ui: Ui, folders: list[Path],
               stopped: list[Interrupted]) -> tuple:
    import optuna

    before = sum(t.number < trial.number for t in counted(trial.study))  # counted trials
    rerun = trial.user_attrs.get("rerun_of")  # a pruned trial re-run whole (`reruns_due`)
    if rerun is not None and any(t.user_attrs.get("rerun_of") == rerun and t.number < trial.number
                                 and reran(t) for t in trial.study.get_trials(deepcopy=False)):
        trial.set_user_attr("surplus", True)  # another worker re-ran it first
        raise optuna.TrialPruned(f"trial {rerun} is re-run by another worker")
    if rerun is None and before >= job.trials:  # by others
        trial.set_user_attr("surplus", True)
        trial.study.stop()
        raise optuna.TrialPruned(f"the study already has {job.trials} trials")
    recipe = load(job.recipe, job.overrides)
    budget = Budget(job.budget, recipe.finetune.steps)
    # the startup is never pruned, nor a re-run (it was, once), nor a retry of either
    protected = (before < job.prune.startup or rerun is not None
                 or bool(trial.user_attrs.get("protected")))
    steps = recipe.finetune.steps
    first = steps if protected or not job.prune.rungs else job.prune.rung_batches(steps)[0]
    if budget.batches is not None and (spent(trial.study) + steps > budget.batches
                                       or not claim(trial, first, budget)):
        trial.set_user_attr("over_budget", True)  # not run, not counted
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        fixed = frozen.system_attrs.get("fixed_params")  # an enqueued default arm: it waits on
        if fixed and "default" in trial.user_attrs:  # for a rerun with a larger budget
            trial.study.enqueue_trial(fixed, user_attrs=enqueued_as(trial))
        trial.study.stop()
        raise optuna.TrialPruned(f"the budget left cannot cover another trial ({steps} batches)")
    prim = recipe.primary
    p = propose(trial, recipe, replay=job.replay)
    trial_dir = job.out / "trials" / f"trial-{trial.number:04d}"
    ran = f"finetune.arms=[{p.arm!r}]"  # the trial's recipe.yaml says which arm it ran
    trecipe = load(job.recipe, [*job.overrides, *p.overrides, ran])
    ui.log(f"trial {trial.number}: arm={trial.params['arm']} {ran} "  # the study's names
           + " ".join(p.overrides))
    if p.outside:  # a default arm's own value, which the sampler never draws
        ui.log(f"trial {trial.number} runs {', '.join(p.outside)} as enqueued: outside the "
               "range the study draws from")
    trial.set_user_attr("dir", str(trial_dir.resolve()))
    folders.append(trial_dir)  # this command's time (RUN/timings.json)
    mark_worker(trial)  # a later command sees whether its worker died (kill -9)
    if protected:
        trial.set_user_attr("protected", True)  # and its retry stays so
    trial.set_user_attr("arm", p.arm)
    dirs = (direction(prim["old"]), direction(prim["new"]))
    watches: list[PruneWatch] = []  # the trial's fine-tune's: the batches it trained
    watch = watching(ui.events_for, lambda inner: PruneWatch(
        trial, job.prune, trial_dir, job.gate, prim, dirs[1], inner, job.margin,
        protected=protected, budget=budget, keep=job.rung_weights), watches)
    try:
        return _trained(job, trial, place, ui, trecipe, p, trial_dir, stopped, watch)
    finally:  # whatever ended it, the trial holds what it trained
        settle(trial, trained(trial, trial_dir / arm_dirname(p.arm),
                              max((w.seen for w in watches), default=0)))


def _trained(job: SearchJob, trial: Any, place: Place, ui: Ui, trecipe: Any, p: Any,
             trial_dir: Path, stopped: list[Interrupted], watch: Any) -> tuple:
    """The trial's fine-tune (`trecipe`: the recipe with its knobs) and WiSE-FT α; its
    validation objectives."""
    import optuna

    recipe, prim = trecipe, trecipe.primary
    dirs = (direction(prim["old"]), direction(prim["new"]))
    try:  # the arm and its WiSE-FT curve (evaluations only), then the best α the gate allows
        rep = finetune(FinetuneJob(trecipe, job.base, trial_dir, [p.arm], wise=True,
                                   gate=job.gate, margin=job.margin), place, Ui(ui.log, watch))
        k, alpha = best_candidate(job.gate, rep, dirs, job.margin)  # the arm or its EMA's
        counts, cand = val_counts(rep), rep["arms"][k]  # counts: the margin's n per task
        if len(rep["arms"]) > 1:  # finetune.ema: '<arm>+ema' is a candidate too
            trial.set_user_attr("candidate", cand["name"])
        said = ("best on validation within the gate" if alpha is not None else "no point passes "
                "the gate and gains on validation: the arm itself, as the trial's point")
        passed, alpha = alpha is not None, 1.0 if alpha is None else alpha
        trial.set_user_attr("wise_alpha", alpha)
        ui.log(f"trial {trial.number}: wise_alpha={alpha:g}"
               + (f" of {ema_label(p.arm, cand['name'])}" if k else "") + f" ({said})")
        cand_dir = trial_dir / arm_dirname(cand["name"])
        if alpha < 1.0 or job.new_offset or job.fisher:  # the point as its own checkpoint
            point = wise(WiseJob(cand_dir, alpha, trial_dir / "wise", None, job.gate,
                                 new_offset=job.new_offset, margin=job.margin, only_if_new=True,
                                 in_place=True,
                                 alphas=recipe.wise_alphas if job.with_alpha else None,
                                 alpha_passed=passed, fisher=job.fisher), place, ui)
            if point:  # {}: the arm itself (α = 1, no offset), its own folder
                rep, cand_dir, cand = point, trial_dir / "wise", point["arms"][0]
                trial.set_user_attr("wise_alpha", point["provenance"]["wise_alpha"])
            if job.fisher:  # 0: the α chosen alone (WiSE-FT's point)
                trial.set_user_attr("fisher_beta", (rep["provenance"].get("fisher") or {}).get(
                    "beta", 0.0) if point else 0.0)
            if job.new_offset:
                tau = (rep["provenance"].get("new_offset") or {}).get("tau", 0.0) if point else 0.0
                trial.set_user_attr("new_offset", tau)
            if trial.user_attrs["wise_alpha"] != alpha:  # moved with β, or with its offset
                with_ = (f"fisher_beta={trial.user_attrs['fisher_beta']:g}" if job.fisher else
                         f"new_offset={trial.user_attrs.get('new_offset', 0.0):+g}")
                ui.log(f"trial {trial.number}: wise_alpha={trial.user_attrs['wise_alpha']:g} "
                       f"with {with_} (chosen together; alone: {alpha:g})")
    except Pruned as e:  # hopeless at a rung: counted, its batches are the study's compute
        trial.set_user_attr("pruned", str(e))
        ui.log(f"trial {trial.number}: {e}")
        raise optuna.TrialPruned(str(e)) from None
    except Diverged as e:  # a diverging lr is an outcome of the search, not an error of it
        trial.set_user_attr("diverged", str(e))
        raise optuna.TrialPruned(f"diverged: {e}") from None
    except (Interrupted, KeyboardInterrupt) as e:  # SIGINT/SIGTERM, in its training or after:
        # not counted, the study stops, the same trial (its knobs) runs again first next time
        if isinstance(e, KeyboardInterrupt):
            e = Interrupted(getattr(e, "signum", signal.SIGINT), trial_dir)
        trial.set_user_attr("interrupted", str(e))
        requeue_first(trial.study, trial.params, retry_of(trial, "interrupted"))
        e.run_dir = job.out  # what is kept: the study's finished trials, not this one's states
        e.resume = (f"the same command again (trial {trial.number} is not counted; it runs again "
                    "first, from the start)")
        stopped.append(e)
        trial.study.stop()
        raise optuna.TrialPruned("interrupted") from None
    arm, views = cand, views_of(cand)
    trial.set_user_attr("views", views)  # what any later gate is judged on
    trial.set_user_attr("chosen_under", chosen_under(job.gate, job.margin))  # α's and τ's
    trial.set_user_attr("val_counts", counts)  # what the margin reads, for any later gate
    base_val = pick(rep["base_val_metrics"], prim)
    trial.set_user_attr("base_val", base_val)  # whether it gains on the new task, for any gate
    judged = judge(job.gate, views["val"], f"trial {trial.number}", job.margin, counts or None,
                   units_of(job.gate, recipe.loss_of))
    gains = gained(pick(views["val"]["metrics"], prim), base_val, dirs)
    # <= 0: passes the gate on validation and gains on the new task
    constraint = [float(len(judged["violations"]) + (not gains))]
    trial.set_user_attr("constraint", constraint)
    if hasattr(trial, "set_constraint"):
        trial.set_constraint("gate_violations", constraint[0])
    trial.set_user_attr("checkpoint", str((cand_dir / "model.safetensors").resolve()))
    trial.set_user_attr("checkpoint_sha256", sha256_file(cand_dir / "model.safetensors"))
    trial.set_user_attr("seed", place.seed if place.seed is not None else recipe.seed)
    trial.set_user_attr("metrics", arm["metrics"])
    val = views["val"]["metrics"]  # the objectives: validation, never test
    return val["old"][prim["old"]], val["new"][prim["new"]]


def search(job: SearchJob, place: Place | None = None, ui: Ui | None = None) -> dict[str, Any]:
    """Run this worker's share of the study's trials, then write the study's report."""
    try:
        import optuna
    except ImportError:
        raise UserError("goodfit search needs Optuna: pip install 'goodfit[search]'") from None

    ui, place = ui or Ui(), place or Place()
    if dist_info()[1] > 1:  # each rank would draw its own trial and DDP would join two models
        raise UserError("goodfit search runs as one process per worker, not under torchrun: to "
                        "run trials in parallel, start more workers on one --storage")
    if job.trials < 1:
        raise UserError(f"--trials {job.trials}: must be at least 1")
    if not job.base.exists():
        raise UserError(f"--base {job.base}: not found")
    recipe = load(job.recipe, job.overrides)
    # every check before --out is created: a link or a file there, --out holding the base
    if job.out.is_symlink() or (job.out.exists() and not job.out.is_dir()):
        raise UserError(f"output path exists and is not a directory: {job.out}")
    check_outputs({}, {"--out": job.out}, {"--base": job.base})
    if job.out.is_dir() and not a_study(job.out):  # another run's folder, or the user's files
        raise UserError(f"output directory {job.out} already exists, is not empty and holds no "
                        "search study (study.db, trials/): choose another --out")
    if not recipe.finetune.optimizer.lr > 0:  # lr 0 cannot move the new task
        raise UserError(f"finetune.optimizer.lr {recipe.finetune.optimizer.lr}: goodfit search "
                        "draws lr around the recipe's, which must be greater than 0")
    prim = recipe.primary
    dirs = (direction(prim["old"]), direction(prim["new"]))
    phases, ran = Phases(), []  # where this command's time goes (RUN/timings.json)
    with phases.phase("load"):  # the data (generated, for a motion recipe) and the base, hashed
        # the splits' contents: a trial is only ever judged with trials trained and measured on
        # the same data (read here once; the trials' sessions reuse it within the command)
        data = data_identity(open_session(recipe, place, join=False))
        base_sha256 = weights_sha256(resolve_base(job.base))  # a file or a hub folder
    identity = {"recipe": recipe.name, "recipe_sha256": recipe.sha256,
                "recipe_sha256_but_gate": but_gate(recipe),  # to say what changed
                "base_sha256": base_sha256,
                KEY: source_sha256(),  # the code its trials run: one per study
                **data,  # data_sha256 (test and validation), train_sha256
                "replay": "searched" if job.replay else "off",  # one search space per study
                "defaults": ("off" if not job.defaults else "first trials" if job.reference
                             else "first trials, no replay reference"),
                "trial_weights": "a rung's or the end's" if job.rung_weights else "the end's",
                "new_offset": ("off" if not job.new_offset else "chosen per trial"
                               + (" with its alpha" if job.with_alpha else "")),
                "fisher": "chosen per trial with its alpha" if job.fisher else "off"}
    if job.storage is None:  # the default study.db lives in --out
        make_out(job.out)

    def enqueue(study: Any) -> None:  # the study's creator only: once, whatever the workers
        enqueue_defaults(study, recipe, job.replay, job.reference)

    study = open_study(job, dirs, identity, enqueue if job.defaults else None)
    make_out(job.out)
    job = replace(job, out=job.out.resolve())  # what the report records: never cwd-relative
    for n, again in reclaim_dead(study):  # kill -9: not counted, no wait for the heartbeat
        ui.log(f"trial {n} was left running by a worker that is gone: it is not counted and "
               + ("runs again first, from the start" if again else "not run again (it was "
                  "itself the retry of a trial whose worker died)"))
    notes = [] if job.replay else ["--no-replay: no trial replays old-task samples"]
    left = job.trials - len(counted(study))
    budget = Budget(job.budget, recipe.finetune.steps)
    if budget.batches is not None and left > 0 and (
            spent(study) + budget.steps > budget.batches):
        notes.append(f"the budget left cannot cover another trial: {left} of --trials "
                     f"{job.trials} not run")
        left = 0
    t0 = time.perf_counter()
    try:
        with phases.phase("trials"):
            _trials(job, study, budget, left, place, ui, ran)
    except BaseException as e:  # an interruption or an error: what it spent is kept
        search_record(job.out, phases, ran, e)
        raise
    short = not any(n.startswith("the budget left cannot") for n in notes)  # said once
    if short and len(counted(study)) < job.trials and any(
            t.user_attrs.get("over_budget") for t in study.get_trials(deepcopy=False)):
        notes.append("the budget left could not cover another trial: the study stopped at "
                     f"{len(counted(study))} of --trials {job.trials}")
    if budget.batches is not None and spent(study) > budget.batches:
        notes.append(f"the budget is spent beyond this command's --budget {job.budget:g}: "
                     f"{spent(study)} batches trained against {budget.batches} (an earlier run "
                     "of the study had a larger budget)")
    with phases.phase("choosing again"):
        rechosen = rechosen_all(job, study, dirs, place, ui, notes)
    # one turn of the workers sharing the folder: two ending together each write RUN/report.*
    # and RUN/recommended/, and one moved the other's fresh recommended/ aside mid-write
    with phases.phase("report"), turns(job.out):
        rep = study_report(job, study, recipe, dirs, notes, budget, rechosen)
        rep["wall_s"] = round(time.perf_counter() - t0, 3)
        write_search_report(rep, job.out, default_curves(rep, prim))
    ui.log(f"search report: {job.out / 'report.md'}  {job.out / 'report.html'}")
    search_record(job.out, phases, ran)
    ui.log(phases.line())
    return rep


def _trials(job: SearchJob, study: Any, budget: Budget, left: int, place: Place, ui: Ui,
            ran: list[Path]) -> None:
    """This worker's share of the trials (`left` to go), then pruned trials re-run whole
    (`--reruns`) with the budget left; raises what stopped a trial short (a signal)."""
    stopped: list[Interrupted] = []
    if left > 0:
        ui.log(f"study {study.study_name}: {job.trials - left} trials so far, {left} to go")

        def enough(study: Any, _: Any) -> None:  # every worker stops at the study's target
            if len(counted(study)) >= job.trials:
                study.stop()

        study.optimize(lambda t: _run_trial(job, t, place, ui, ran, stopped),
                       n_trials=left, callbacks=[enough])
        if stopped:  # no report from a study cut short; the same command continues it
            raise stopped[0]
    if job.reruns and len(counted(study)) >= job.trials:
        for n in reruns_due(study, budget):
            ui.log(f"the budget left covers a whole fine-tune: re-running pruned trial {n} "
                   "whole (its knobs, the study's seed)")
            study.enqueue_trial(study.trials[n].params, user_attrs={"rerun_of": n})
            study.optimize(lambda t: _run_trial(job, t, place, ui, ran, stopped),
                           n_trials=1)
            if stopped:
                raise stopped[0]
