"""The commands that train (fit a model): pretrain, finetune, wise, search, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from goodfit_cli.cli.base import (
    BASE,
    BASE_OR_RUNS,
    DATA_DIR,
    DEVICE,
    EXAMPLES,
    FT_SEED,
    GATE,
    JUNIT,
    LOG_FORMAT,
    MAX_NEW,
    MAX_NFR,
    MAX_OLD,
    MAX_OLD_DROP,
    MAX_OLD_DROP_REL,
    MIN_NEW,
    MIN_OLD,
    NPROC,
    OVERRIDES,
    OVERWRITE,
    PROGRESS_EVERY,
    RECIPE,
    RECIPE_OR_RUNS,
    RUN_DIR,
    SEED,
    LogFormat,
    UserError,
    app,
    default_out,
    display,
    handled,
    launch_if_asked,
    bounds,
    close_count,
    load,
    log,
    print_report,
    show,
    say_gate,
    ui_for,
)
from goodfit_cli.cli.console import metrics_table
from goodfit_cli.cli.usage import SEARCH_HELP


@app.command(epilog=EXAMPLES["pretrain"])
@handled
def pretrain(
    recipe: str = RECIPE,
    out_dir: Optional[Path] = RUN_DIR,
    seed: Optional[int] = SEED,
    device: Optional[str] = DEVICE,
    data_dir: Optional[str] = DATA_DIR,
    overwrite: bool = OVERWRITE,
    nproc: int = NPROC,
    log_format: LogFormat = LOG_FORMAT,
    progress_every: float = PROGRESS_EVERY,
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Train the base model on the recipe's OLD task; writes OUT/model.safetensors."""
    from goodfit_cli.core.distributed import is_main
    from goodfit_cli.workflows.pretrain import pretrain as run_pretrain
    from goodfit_cli.trainer.session import Place

    display(log_format, progress_every)
    r = load(recipe, overrides)  # a bad recipe: one line here, before any process starts
    launch_if_asked(nproc)
    dest = out_dir or default_out(r.name, "base")
    res = run_pretrain(r, dest, Place(device, seed, data_dir),
                       ui_for(r.primary, units=r.units), overwrite=overwrite)
    if not is_main():
        return
    show(metrics_table(f"pretrained {r.name} (test split)", [("base", res.metrics)],
                       r.primary, r.units))
    log(f"checkpoint: {dest / 'model.safetensors'}")


@app.command(epilog=EXAMPLES["finetune"])
@handled
def finetune(
    base: Optional[Path] = BASE_OR_RUNS,
    recipe: Optional[str] = RECIPE_OR_RUNS,
    optimizer: Optional[list[str]] = typer.Option(
        None, "--optimizer",
        help="An arm (`goodfit list arms`); repeat for more; replaces the recipe's finetune.arms."),
    out_dir: Optional[Path] = RUN_DIR,
    seed: Optional[int] = FT_SEED,
    device: Optional[str] = DEVICE,
    data_dir: Optional[str] = DATA_DIR,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run dir."),
    overwrite: bool = OVERWRITE,
    no_wise: bool = typer.Option(False, "--no-wise", help="Skip the WiSE-FT interpolation curve."),
    gate: Optional[Path] = GATE,
    max_old_drop: Optional[float] = MAX_OLD_DROP,
    max_nfr: Optional[float] = MAX_NFR,
    min_old: Optional[list[str]] = MIN_OLD,
    max_old: Optional[list[str]] = MAX_OLD,
    min_new: Optional[list[str]] = MIN_NEW,
    max_new: Optional[list[str]] = MAX_NEW,
    max_old_drop_rel: Optional[list[str]] = MAX_OLD_DROP_REL,
    junit: Optional[Path] = JUNIT,
    nproc: int = NPROC,
    log_format: LogFormat = LOG_FORMAT,
    progress_every: float = PROGRESS_EVERY,
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Fine-tune the base on the NEW task with each arm; write checkpoints and a report."""
    from goodfit_cli.training.checks import check_stages
    from goodfit_cli.workflows.finetune import FinetuneJob
    from goodfit_cli.workflows.finetune import finetune as run_finetune
    from goodfit_cli.workflows.resume import check_resume_args, resume_job
    from goodfit_cli.workflows.reporting import gate_for, raise_on_gate_failure
    from goodfit_cli.trainer.session import Place

    display(log_format, progress_every)
    place = Place(device, seed, data_dir)
    if resume is not None:
        job, place = resume_job(resume, overrides, place, arms=optimizer or None, base=base)
        check_resume_args(resume, job.recipe, recipe, out_dir, overwrite, overrides)
    else:
        if recipe is None or base is None:
            raise UserError("--base and --recipe are required (or --resume DIR)")
        r = load(recipe, overrides)
        job = FinetuneJob(r, base, out_dir or default_out(r.name, "finetune"), optimizer or None,
                          overwrite=overwrite)
    if no_wise:  # else a fresh run's default (on), a resumed run's own (run.json)
        job.wise = False
    job.gate = gate_for(job.recipe, gate, max_old_drop, max_nfr, bounds(
        min_old, max_old, min_new, max_new, max_old_drop_rel), recorded=job.gate, junit=junit)
    say_gate(job.gate)
    job.junit = junit
    if nproc > 1:  # a bad recipe, arm or gate: one line here, before any process starts
        check_stages(job.recipe, job.arms)
    launch_if_asked(nproc)
    report = run_finetune(job, place, ui_for(job.recipe.primary, units=job.recipe.units))
    if report:  # rank 0
        print_report(report, job.out)
        raise_on_gate_failure(report, shipped=True)  # the arms, and what the verdict ships


@app.command(epilog=EXAMPLES["wise"])
@handled
def wise(
    arm_dir: Path = typer.Argument(..., help="A finished arm of a fine-tuning run: RUN/<arm>."),
    alpha: float = typer.Option(..., "--alpha", help="Weight of the arm: (1-α)·base + α·arm."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the candidate checkpoint and its report."),
    gate: Optional[Path] = GATE,
    max_old_drop: Optional[float] = MAX_OLD_DROP,
    max_nfr: Optional[float] = MAX_NFR,
    min_old: Optional[list[str]] = MIN_OLD,
    max_old: Optional[list[str]] = MAX_OLD,
    min_new: Optional[list[str]] = MIN_NEW,
    max_new: Optional[list[str]] = MAX_NEW,
    max_old_drop_rel: Optional[list[str]] = MAX_OLD_DROP_REL,
    junit: Optional[Path] = JUNIT,
    device: Optional[str] = DEVICE,
    data_dir: Optional[str] = DATA_DIR,
    overwrite: bool = OVERWRITE,
    new_offset: bool = typer.Option(False, "--new-offset/--no-new-offset", help="Also shift the logits of the new task's own classes by the offset chosen on validation that gains the most on the new task without losing on the old (written into the head's bias; see goodfit search --help)."),
    fisher: bool = typer.Option(False, "--fisher/--no-fisher", help="Also try the points that weigh the arm's change by the old task's Fisher, base + a(arm - base)/(1 + b F) for b 0.3, 1 and 3, each b's line from a = 1 down the WiSE-FT grid to its first point within the gate on validation: the best of them replaces --alpha where it is better on the new task there (see goodfit search --help)."),
) -> None:
    """A WiSE-FT point of an arm as a candidate checkpoint, evaluated and gated like an arm."""
    from goodfit_cli.workflows.reporting import gate_for, raise_on_gate_failure
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.workflows.wise import WiseJob, check_arm_dir
    from goodfit_cli.workflows.wise import wise as run_wise

    check_arm_dir(arm_dir)  # before its run's recipe.yaml is read
    r = load(str(arm_dir.parent / "recipe.yaml"), None)
    g = gate_for(r, gate, max_old_drop, max_nfr, bounds(
        min_old, max_old, min_new, max_new, max_old_drop_rel), junit=junit)
    say_gate(g)
    report = run_wise(WiseJob(arm_dir, alpha, out_dir, None, g, junit, overwrite, new_offset,
                              fisher=fisher),
                      Place(device, None, data_dir), ui_for(r.primary, units=r.units))
    if not report:  # a rank other than 0 under torchrun
        return
    print_report(report, out_dir)
    raise_on_gate_failure(report)


@app.command(help=SEARCH_HELP, epilog=EXAMPLES["search"])
@handled
def search(
    base: Path = BASE,
    recipe: str = RECIPE,
    trials: int = typer.Option(..., "--trials", "-n", help="The study's target number of trials."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (trials, report, study.db)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL shared by workers (postgresql://...); default sqlite in --out."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default goodfit-<recipe>)."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed."),
    gate: Optional[Path] = GATE,
    max_old_drop: Optional[float] = MAX_OLD_DROP,
    max_nfr: Optional[float] = MAX_NFR,
    min_old: Optional[list[str]] = MIN_OLD,
    max_old: Optional[list[str]] = MAX_OLD,
    min_new: Optional[list[str]] = MIN_NEW,
    max_new: Optional[list[str]] = MAX_NEW,
    max_old_drop_rel: Optional[list[str]] = MAX_OLD_DROP_REL,
    defaults: bool = typer.Option(True, "--defaults/--no-defaults", help="The recipe's default arms are the study's first trials (counted toward --trials and --budget; the reference points)."),
    replay: bool = typer.Option(True, "--replay/--no-replay", help="Search the replay fraction of old-task samples (--no-replay: trials never replay old data)."),
    reference: bool = typer.Option(True, "--replay-reference/--no-replay-reference", help="After the default arms, the replay reference: the first arm with replay 0.5, never pruned (see above; default on where replay is searched)."),
    rule: str = typer.Option("new", "--rule", help="How the recommendation is picked among the trials that pass the gate and gain on the new task: new, knee or weight=W (see above)."),
    rungs: int = typer.Option(2, "--rungs", min=0, help="Successive-halving rungs at which a trial may be pruned (0: no pruning)."),
    val_margin: float = typer.Option(0.5, "--val-margin", min=0.0, help="Judge the gate on validation this many standard errors inside each limit on an accuracy or rate (0: exactly at the limit)."),
    budget: str = typer.Option("10", "--budget", help="The study's compute in fine-tunes (one: the recipe's finetune.steps batches), the default arms included; 0 or none: unlimited (see above)."),
    reruns: bool = typer.Option(False, "--reruns/--no-reruns", help="Spend the budget left after --trials re-running the best pruned trials whole (see above; default off)."),
    new_offset: bool = typer.Option(True, "--new-offset/--no-new-offset", help="Let each trial shift the logits of the new task's own classes by an offset chosen on validation (see above; default on)."),
    rung_weights: bool = typer.Option(True, "--rung-weights/--end-weights", help="A trial may end with the weights it had at a pruning rung, where their best WiSE-FT point on validation beat its end weights' (see above; --end-weights: always its end's)."),
    with_alpha: bool = typer.Option(False, "--offset-with-alpha/--offset-after-alpha", help="Choose each trial's new-class offset together with its WiSE-FT alpha (see above; opt-in: on held-out digits splits it gained nothing over the default, the offset at the alpha chosen alone)."),
    fisher: Optional[bool] = typer.Option(None, "--fisher/--no-fisher", help="Let each trial's point weigh its change from the base by the old task's Fisher, alpha chosen with beta on validation (see above; default on, off with --offset-with-alpha)."),
    device: Optional[str] = DEVICE,
    data_dir: Optional[str] = DATA_DIR,
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides of the recipe"),
) -> None:
    """Search arms and knobs for the best update the gate allows (see SEARCH_HELP)."""
    from goodfit_cli.workflows.reporting import gate_for
    from goodfit_cli.report.front import parse_rule
    from goodfit_cli.workflows.halving import Halving
    from goodfit_cli.workflows.budget import parse_budget
    from goodfit_cli.workflows.search import SearchJob
    from goodfit_cli.workflows.search import search as run_search
    from goodfit_cli.report.trials import shipped_name
    from goodfit_cli.trainer.measured import measured_once
    from goodfit_cli.trainer.session import Place

    how = parse_rule(rule)  # a bad --rule: one line, before anything runs
    cap = parse_budget(budget)
    if fisher and with_alpha:
        raise UserError("--fisher and --offset-with-alpha: a trial's alpha is chosen with one or "
                        "the other; give --no-fisher or --offset-after-alpha")
    r = load(recipe, overrides)
    g = gate_for(r, gate, max_old_drop, max_nfr, bounds(
        min_old, max_old, min_new, max_new, max_old_drop_rel))
    say_gate(g)
    with measured_once():  # the base measured once for all trials and their WiSE candidates
        rep = run_search(SearchJob(recipe, base, out_dir, trials, list(overrides or []),
                                   storage, study, seed, g, defaults, replay, how,
                                   Halving(rungs=rungs), val_margin, cap, reruns, new_offset,
                                   with_alpha, reference, rung_weights,
                                   fisher=not with_alpha if fisher is None else fisher),
                         Place(device, None, data_dir), ui_for(r.primary, units=r.units))
    rec = rep["recommendation"]
    for note in rep.get("notes") or []:  # the budget, a changed gate, ...: said here too
        if note.startswith(("the budget", "the gate changed", "nothing is recommended",
                            "the earlier recommendation")):
            log(note)
    log(f"{rep['complete']} trial{'s' if rep['complete'] != 1 else ''} complete"
        + (f" ({rep['reruns']} of them re-runs of pruned trials)" if rep.get("reruns") else "")
        + f", {rep['pruned']} pruned; recommendation "
        f"(--rule {rep['rule']}): " + (
        ("none passes the gate (the base itself fails it on validation: see the report)"
         if rep.get("base_outside_gate") else "none passes the gate and gains on the new task"
         ) if rec is None else
        f"trial {rec['number']}, {shipped_name(rec)} -> "
        f"{rep.get('exported') or rep.get('export_note')}")
        + _close_line(rep.get("close_calls")) + _failures_line(rep))


def _failures_line(rep: dict, most: int = 3) -> str:
    """The limits that failed, with value and limit, where the last line says a gate failed:
    each finished trial's on validation when nothing is recommended, else the recommendation's
    on test (reported only); empty when nothing failed."""
    rec = rep.get("recommendation")
    if rec is not None:
        if rec.get("passes_gate_test") is not False:
            return ""
        return ("; it FAILS the gate on test: "
                + "; ".join(rec.get("violations_test") or ["see the report"]))
    failed = [t for t in rep.get("trials") or [] if t.get("state") == "COMPLETE"
              and not t.get("feasible") and t.get("violations")]
    said = [f"trial {t['number']}: {'; '.join(t['violations'])}" for t in failed[:most]]
    more = f"; {len(failed) - most} more (see the report)" if len(failed) > most else ""
    return f"; on validation {' | '.join(said)}{more}" if said else ""


def _close_line(cc: dict | None) -> str:
    """The search's last line on how many trials the validation split cannot tell from the
    recommendation (report/front.py close_calls); empty when none or not measured."""
    if not cc or not cc["trials"]:
        return ""
    return f"; {close_count(len(cc['trials']), 'trial')} (see the report)"


@app.command(epilog=EXAMPLES["demo"])
@handled
def demo(
    quick: bool = typer.Option(False, "--quick", help="A shortened run (well under a minute)."),
    out_dir: Optional[Path] = RUN_DIR,
    device: Optional[str] = DEVICE,
    log_format: LogFormat = LOG_FORMAT,
    progress_every: float = PROGRESS_EVERY,
    overwrite: bool = OVERWRITE,
) -> None:
    """The toy recipe: pretrain, fine-tune 3 arms under a gate (old mse at most 1.5x), report.

    The verdict ships the update that learns most within the gate; exit code 0 either way."""
    from goodfit_cli.workflows.demo import demo as run_demo
    from goodfit_cli.workflows.demo import demo_recipe
    from goodfit_cli.trainer.session import Place

    display(log_format, progress_every)
    r = demo_recipe(quick)
    dest = out_dir or default_out("demo", "quick" if quick else "full")
    log(f"[bold]goodfit demo[/]: {escape(r.description)}", markup=True)
    report = run_demo(r, dest, Place(device), ui_for(r.primary, units=r.units),
                      overwrite=overwrite)
    print_report(report, dest / "finetune")
