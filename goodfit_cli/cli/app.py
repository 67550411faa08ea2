"""The `goodfit` command line: Typer wiring only. Rich output lives here and nowhere else.

Exit codes: 0 success, 2 user error (one line; `--debug` for the traceback), 3 a regression gate
failed, 4 training diverged (NaN/Inf loss; the last good state is kept), 130/143 interrupted by
SIGINT/SIGTERM (a resumable state was saved), 1 a bug.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from goodfit_cli import __version__
from goodfit_cli.cli.console import (
    DISPLAY,
    RichEvents,
    err,
    log,
    metrics_table,
    out,
    show,
    summary_table,
)
from goodfit_cli.cli.usage import EXAMPLES, Group
from goodfit_cli.core.errors import Diverged, GateFailure, Interrupted, UserError

# Workflows (and torch with them) are imported inside each command, so that `goodfit --help`
# and `goodfit --version` start fast.

app = typer.Typer(
    name="goodfit",
    help="Fine-tune a converged model on new data without breaking what it already does.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
    epilog=EXAMPLES["goodfit"],
)
data_app = typer.Typer(help="Inspect and generate data.", no_args_is_help=True, cls=Group,
                       epilog=EXAMPLES["data"])
app.add_typer(data_app, name="data")

STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"goodfit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for every error."),
) -> None:
    """Fine-tune a converged model on new data without breaking what it already does."""
    STATE["debug"] = debug
    display("text", 30.0)  # the training commands' --log-format / --progress-every change it


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to exit codes: UserError 2, GateFailure 3, interruption 130/143, bug 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UserError as e:
            if STATE["debug"]:
                traceback.print_exc()
            # messages quote the user's text (paths, recipe values): never read it as markup
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except Diverged as e:
            err.print(f"[bold red]training diverged:[/] {escape(str(e))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except GateFailure as e:
            err.print(f"[bold red]gate failed:[/] {escape(str(e))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(3)
        except Interrupted as e:
            err.print(f"[yellow]interrupted[/]: state saved in {escape(str(e.run_dir))}. To "
                      f"resume, run {escape(e.resume)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except Exception as e:  # a bug: say so, and show the traceback on request
            if STATE["debug"]:
                traceback.print_exc()
            else:
                err.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
                          "(run with --debug for the traceback and report it)",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(1)
    return wrapper


# ---------------------------------------------------------------------------------------------
# helpers


def load(recipe: str, overrides: list[str] | None):
    from goodfit_cli.workflows.recipes import load as load_recipe

    return load_recipe(recipe, overrides)


def ui_for(primary: dict[str, str], log_fn: Callable[[str], None] = log):
    """Log lines and a progress display per run, drawn by Rich."""
    from goodfit_cli.workflows.stage import Ui

    return Ui(log_fn, lambda label: RichEvents(label, primary))


LogFormat = Literal["text", "json"]
LOG_FORMAT = typer.Option("text", "--log-format",
                          help="text: a progress bar on a terminal, else a plain line every "
                               "--progress-every seconds; json: one JSON object per line.")
PROGRESS_EVERY = typer.Option(30.0, "--progress-every", min=0.0,
                              help="Seconds between progress lines when there is no terminal "
                                   "(and in json).")


def display(log_format: str, every_s: float) -> None:
    """Set how this command shows its runs (console.DISPLAY)."""
    DISPLAY.format, DISPLAY.every_s = log_format, every_s


def default_out(recipe_name: str, kind: str) -> Path:
    return Path("runs") / f"{recipe_name}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------------------------
# commands


@app.command(epilog=EXAMPLES["pretrain"])
@handled
def pretrain(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe YAML (or a shipped name)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Initial weights and batch order (default: the recipe's seed)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (torchrun, DistributedDataParallel)."),
    log_format: LogFormat = LOG_FORMAT,
    progress_every: float = PROGRESS_EVERY,
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Train the base model on the recipe's OLD task; writes OUT/model.safetensors."""
    from goodfit_cli.core.distributed import is_main
    from goodfit_cli.workflows.pretrain import pretrain as run_pretrain
    from goodfit_cli.workflows.session import Place

    launch_if_asked(nproc)
    display(log_format, progress_every)
    r = load(recipe, overrides)
    dest = out_dir or default_out(r.name, "base")
    res = run_pretrain(r, dest, Place(device, seed, data_dir), ui_for(r.primary),
                       overwrite=overwrite)
    if not is_main():
        return
    show(metrics_table(f"pretrained {r.name}", [("base", res.metrics)], r.primary))
    log(f"checkpoint: {dest / 'model.safetensors'}")

@app.command(epilog=EXAMPLES["finetune"])
@handled
def finetune(
    base: Optional[Path] = typer.Option(None, "--base", "-b", help="Base checkpoint (.safetensors); with --resume, the run's own by default."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe YAML (or a shipped name)."),
    optimizer: Optional[list[str]] = typer.Option(None, "--optimizer", help="An arm; repeat for more."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Initial weights and batch order (default: the recipe's seed)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run dir."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
    no_wise: bool = typer.Option(False, "--no-wise", help="Skip the WiSE-FT interpolation curve."),
    gate: Optional[Path] = typer.Option(None, "--gate", help="gate.yaml: limits; exit 3 if violated."),
    max_old_drop: Optional[float] = typer.Option(None, "--max-old-drop", help="Gate: largest allowed drop of the old task's primary metric (absolute)."),
    max_nfr: Optional[float] = typer.Option(None, "--max-nfr", help="Gate: largest allowed negative flip rate on the old task."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write the gate as JUnit XML."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (torchrun, DistributedDataParallel)."),
    log_format: LogFormat = LOG_FORMAT,
    progress_every: float = PROGRESS_EVERY,
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Fine-tune the base on the NEW task with each arm; write checkpoints and a report."""
    from goodfit_cli.workflows.finetune import FinetuneJob, resume_job
    from goodfit_cli.workflows.finetune import finetune as run_finetune
    from goodfit_cli.workflows.reporting import gate_for, raise_on_gate_failure
    from goodfit_cli.workflows.runcheck import check_resume_args
    from goodfit_cli.workflows.session import Place

    launch_if_asked(nproc)
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
    job.wise = not no_wise
    job.gate = gate_for(job.recipe, gate, max_old_drop, max_nfr)
    job.junit = junit
    report = run_finetune(job, place, ui_for(job.recipe.primary))
    if report:  # rank 0
        print_report(report, job.out)
        raise_on_gate_failure(report)

def launch_if_asked(nproc: int) -> None:
    """`--nproc N` (N > 1): re-run this very command under torchrun with N processes."""
    if nproc <= 1 or "WORLD_SIZE" in os.environ:
        return
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "goodfit_cli", *argv]
    log(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} "
        f"-m goodfit_cli {' '.join(argv)}")
    raise typer.Exit(subprocess.call(cmd))


@app.command(epilog=EXAMPLES["compare"])
@handled
def compare(
    base: Path = typer.Argument(..., help="Base checkpoint or run directory."),
    candidates: list[Path] = typer.Argument(..., help="Candidate checkpoints or run directories."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe YAML (or a shipped name)."),
    gate: Optional[Path] = typer.Option(None, "--gate", help="gate.yaml with limits."),
    max_old_drop: Optional[float] = typer.Option(None, "--max-old-drop", help="Gate: largest allowed drop of the old task's primary metric (absolute)."),
    max_nfr: Optional[float] = typer.Option(None, "--max-nfr", help="Gate: largest allowed negative flip rate on the old task."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="JUnit XML: one case per candidate and limit."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Regression report of candidates against a base; exit 3 when a gate is violated."""
    from goodfit_cli.workflows.compare import compare as run_compare
    from goodfit_cli.workflows.reporting import gate_for, raise_on_gate_failure
    from goodfit_cli.workflows.session import Place

    r = load(recipe, None)
    g = gate_for(r, gate, max_old_drop, max_nfr)
    dest = out_dir or default_out(r.name, "compare")
    report = run_compare(r, base, list(candidates), dest, gate=g, junit=junit,
                         place=Place(device, None, data_dir), ui=ui_for(r.primary),
                         overwrite=overwrite)
    if not report:  # a rank other than 0 under torchrun
        return
    print_report(report, dest)
    raise_on_gate_failure(report)

@app.command(epilog=EXAMPLES["wise"])
@handled
def wise(
    arm_dir: Path = typer.Argument(..., help="A finished arm of a fine-tuning run: RUN/<arm>."),
    alpha: float = typer.Option(..., "--alpha", help="Weight of the arm: (1-α)·base + α·arm."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the candidate checkpoint and its report."),
    gate: Optional[Path] = typer.Option(None, "--gate", help="gate.yaml with limits."),
    max_old_drop: Optional[float] = typer.Option(None, "--max-old-drop", help="Gate: largest allowed drop of the old task's primary metric (absolute)."),
    max_nfr: Optional[float] = typer.Option(None, "--max-nfr", help="Gate: largest allowed negative flip rate on the old task."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write the gate as JUnit XML."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out (the old content is moved aside)."),
) -> None:
    """A WiSE-FT point of an arm as a candidate checkpoint, evaluated and gated like an arm."""
    from goodfit_cli.workflows.reporting import gate_for, raise_on_gate_failure
    from goodfit_cli.workflows.session import Place
    from goodfit_cli.workflows.wise import WiseJob
    from goodfit_cli.workflows.wise import wise as run_wise

    r = load(str(arm_dir.parent / "recipe.yaml"), None)
    g = gate_for(r, gate, max_old_drop, max_nfr)
    report = run_wise(WiseJob(arm_dir, alpha, out_dir, None, g, junit, overwrite),
                      Place(device, None, data_dir), ui_for(r.primary))
    if not report:  # a rank other than 0 under torchrun
        return
    print_report(report, out_dir)
    raise_on_gate_failure(report)


@app.command(epilog=EXAMPLES["search"])
@handled
def search(
    base: Path = typer.Option(..., "--base", "-b", help="Base checkpoint (.safetensors)."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe YAML (or a shipped name)."),
    trials: int = typer.Option(..., "--trials", "-n", help="The study's target number of trials."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder (trials, report, study.db)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL shared by workers (postgresql://...); default sqlite in --out."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default goodfit-<recipe>)."),
    seed: int = typer.Option(0, "--seed", help="Sampler seed."),
    gate: Optional[Path] = typer.Option(None, "--gate", help="gate.yaml: the search's constraint."),
    max_old_drop: Optional[float] = typer.Option(None, "--max-old-drop", help="Gate: largest allowed drop of the old task's primary metric (absolute)."),
    max_nfr: Optional[float] = typer.Option(None, "--max-nfr", help="Gate: largest allowed negative flip rate on the old task."),
    defaults: bool = typer.Option(True, "--defaults/--no-defaults", help="Also run the recipe's default arms as reference points."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides of the recipe"),
) -> None:
    """Search arms and knobs for the best update the gate allows (Optuna, multi-objective)."""
    from goodfit_cli.workflows.reporting import gate_for
    from goodfit_cli.workflows.search import SearchJob
    from goodfit_cli.workflows.search import search as run_search
    from goodfit_cli.workflows.session import Place

    r = load(recipe, overrides)
    g = gate_for(r, gate, max_old_drop, max_nfr)
    rep = run_search(SearchJob(recipe, base, out_dir, trials, list(overrides or []), storage,
                               study, seed, g, defaults), Place(device, None, data_dir),
                     ui_for(r.primary))
    rec = rep["recommendation"]
    log(f"{rep['complete']} trials complete; recommendation: " + (
        "none passes the gate" if rec is None else
        f"trial {rec['number']} ({rec['arm']}) -> {rep.get('exported') or rep.get('export_note')}"))


def print_report(report: dict[str, Any], dest: Path) -> None:
    show(summary_table(report))
    log(f"report: {dest / 'report.md'}  {dest / 'report.html'}")


@app.command("eval", epilog=EXAMPLES["eval"])
@handled
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint (.safetensors) to evaluate."),
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe YAML (or a shipped name)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    json_out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON here (default: eval-<recipe>.json beside the checkpoint)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Evaluate a checkpoint on the recipe's old and new tasks; print and write the JSON."""
    from goodfit_cli.workflows.evaluate import evaluate
    from goodfit_cli.workflows.session import Place
    from goodfit_cli.workflows.stage import Ui

    r = load(recipe, overrides)
    done = evaluate(r, checkpoint, Place(device, None, data_dir),
                    Ui(lambda m: err.print(escape(m), highlight=False)), out=json_out)
    if done is None:  # a rank other than 0 under torchrun
        return
    res, dest = done
    typer.echo(json.dumps(res, indent=2))  # stdout stays pure JSON; where it went is said on stderr
    err.print(f"written to {escape(str(dest))}", highlight=False, soft_wrap=True)

@app.command(epilog=EXAMPLES["validate"])
@handled
def validate(recipes: list[str] = typer.Argument(
        ..., help="Recipe files to check, then key.sub=value overrides applied to each.")) -> None:
    """Check recipes without running them: schema, registry names, model arguments, each arm's
    optimizer and schedule (everything that would fail at run time before training).
    """
    from goodfit_cli.workflows.validate import validate as check

    overrides = [a for a in recipes if "=" in a]
    failed = 0
    for path in (Path(a) for a in recipes if "=" not in a):
        try:
            r = check(path, overrides)
            out.print(f"[green]ok[/]  {escape(str(path))}  ({escape(r.name)})", highlight=False,
                      soft_wrap=True)
        except UserError as e:
            failed += 1
            err.print(f"[red]bad[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(2)

@app.command("optimizers", epilog=EXAMPLES["optimizers"])
@handled
def list_optimizers() -> None:
    """List the optimizers an arm may name (timm's registry).

    Each NAME is an arm (`--optimizer NAME`), `lookahead_NAME` is timm's Lookahead over it, and
    `goodfit:NAME` is GoodFit over it.
    """
    from goodfit_cli.workflows.validate import optimizers

    t = Table(title="optimizers (also lookahead_<name>, goodfit:<name>)")
    t.add_column("name", no_wrap=True)
    t.add_column("description")
    for name, desc in optimizers():
        t.add_row(escape(name), escape(desc))
    show(t)

@app.command("recipes", epilog=EXAMPLES["recipes"])
@handled
def list_recipes() -> None:
    """List the shipped recipes."""
    from goodfit_cli.workflows.recipes import shipped, shipped_dir

    t = Table(title=f"recipes in {escape(str(shipped_dir()))}")
    t.add_column("name")
    t.add_column("file")
    t.add_column("description")
    for p, r in shipped():
        if isinstance(r, UserError):
            t.add_row(escape(p.stem), escape(p.name), f"[red]invalid: {escape(str(r))}")
        else:
            t.add_row(escape(r.name), escape(p.name), escape(r.description))
    show(t)

@app.command("list", epilog=EXAMPLES["list"])
@handled
def list_registries(
    kind: Optional[str] = typer.Argument(None, help="models, datasets, objectives, optimizers or schedulers (default: all)."),
) -> None:
    """List what a recipe can name, with one-line descriptions; installed plugins included."""
    from goodfit_cli.workflows.registries import registry_rows

    for name, rows in registry_rows(kind).items():
        t = Table(title=name)
        for col in ("name", "description", "from"):
            t.add_column(col)
        for row in rows:
            t.add_row(*(escape(c) for c in row))
        out.print(t)


@data_app.command("summary", epilog=EXAMPLES["data summary"])
@handled
def data_summary(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe YAML (or a shipped name)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Samples and classes per task and split: what a recipe will train and evaluate on."""
    from goodfit_cli.workflows.datasets import summary as data_of

    r = load(recipe, overrides)
    summary = data_of(r, data_dir)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    t = Table(title=f"{r.name}: data")
    for c in ("task", "kind", "split", "samples", "classes"):
        t.add_column(c)
    for name, s in summary.items():
        for split in ("train", "test"):
            t.add_row(name, s["kind"], split, str(s[split]["samples"]), str(s[split]["classes"] or "-"))
    show(t)

@data_app.command("motion-synth", epilog=EXAMPLES["data motion-synth"])
@handled
def data_motion_synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Directory; train/ and test/ shards go inside."),
    agents: str = typer.Option("car", "--agents", help="Target agents: car | pedestrian."),
    scenes: int = typer.Option(1000, "--scenes", help="Training scenes."),
    test_scenes: Optional[int] = typer.Option(None, "--test-scenes", help="Test scenes [default: scenes/10]."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the scenes."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Scenes per shard file."),
    max_agents: int = typer.Option(16, "--max-agents", help="Nearby agents kept per scene."),
    polylines: int = typer.Option(64, "--polylines", help="Map polylines kept per scene."),
    points: int = typer.Option(10, "--points", help="Points per map polyline (2 m apart)."),
    lights: int = typer.Option(4, "--lights", help="Traffic lights kept per scene."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace shards already in --out."),
) -> None:
    """Synthetic driving scenarios (10 Hz, 1.1 s history, 8 s future) as safetensors shards."""
    from goodfit_cli.workflows.datasets import write_synthetic

    counts = write_synthetic(out_dir, agents, scenes, test_scenes, seed,
                             (max_agents, polylines, points, lights), shard_size, overwrite, log)
    log(f"wrote {counts['train']} train and {counts['test']} test {agents} scenarios to {out_dir}")


@app.command(epilog=EXAMPLES["demo"])
@handled
def demo(
    quick: bool = typer.Option(False, "--quick", help="A shortened run (well under a minute)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    log_format: LogFormat = LOG_FORMAT,
    progress_every: float = PROGRESS_EVERY,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a non-empty --out (the old base/ and finetune/ are kept aside)."),
) -> None:
    """The toy recipe end to end: pretrain, fine-tune (baseline, head only, GoodFit), report."""
    from goodfit_cli.workflows.demo import demo as run_demo
    from goodfit_cli.workflows.demo import demo_recipe
    from goodfit_cli.workflows.session import Place

    display(log_format, progress_every)
    r = demo_recipe(quick)
    dest = out_dir or default_out("demo", "quick" if quick else "full")
    log(f"[bold]goodfit demo[/]: {escape(r.description)}", markup=True)
    report = run_demo(r, dest, Place(device), ui_for(r.primary), overwrite=overwrite)
    print_report(report, dest / "finetune")


def main() -> None:
    """The console entry point. Under torchrun a rank leaves with os._exit once its output is
    flushed: the run has already left the process group, and interpreter teardown with the
    collective library's threads still alive can abort a finished run ("terminate called
    without an active exception")."""
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):  # never raises
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise


if __name__ == "__main__":
    main()
