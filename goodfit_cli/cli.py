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
from typing import Any, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from goodfit_cli import __version__
from goodfit_cli.console import RichEvents, err, log, metrics_table, out, summary_table
from goodfit_cli.errors import Diverged, GateFailure, UserError

app = typer.Typer(
    name="goodfit",
    help="Fine-tune a converged model on new data without breaking what it already does.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and generate data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

STATE = {"debug": False}
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


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


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to exit codes: UserError 2, GateFailure 3, interruption 130/143, bug 1."""
    from goodfit_cli.runner import Interrupted

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


def find_recipe(recipe: str) -> Path:
    """A path, or the name of a shipped recipe ('toy' → recipes/toy.yaml)."""
    p = Path(recipe)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    shipped = RECIPES_DIR / f"{recipe}.yaml"
    return shipped if shipped.exists() else p


def load(recipe: str, overrides: list[str] | None):
    from goodfit_cli.recipe import load_recipe

    return load_recipe(find_recipe(recipe), overrides or [])


def primary_metrics(r) -> dict[str, str]:
    return {"old": r.old_task.metrics[0], "new": r.new_task.metrics[0]}


def default_out(recipe_name: str, kind: str) -> Path:
    return Path("runs") / f"{recipe_name}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------------------------
# commands


@app.command()
@handled
def pretrain(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe YAML (or a shipped name)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Initial weights and batch order (default: the recipe's seed)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (torchrun, DistributedDataParallel)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Train the base model on the recipe's OLD task; writes OUT/model.safetensors."""
    from goodfit_cli import runner

    launch_if_asked(nproc)
    r = load(recipe, overrides)
    dest = out_dir or default_out(r.name, "base")
    res = runner.pretrain(r, dest, device=device, seed=seed, data_dir=data_dir,
                          events=RichEvents("pretrain", primary_metrics(r)), log=log,
                          overwrite=overwrite)
    from goodfit_cli.distributed import is_main

    if not is_main():
        return
    out.print(metrics_table(f"pretrained {r.name}", [("base", res.metrics)], primary_metrics(r)))
    log(f"checkpoint: {dest / 'model.safetensors'}")


@app.command()
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
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides"),
) -> None:
    """Fine-tune the base on the NEW task with each arm; write checkpoints and a report."""
    from goodfit_cli import runner
    from goodfit_cli.reporting import raise_on_gate_failure

    launch_if_asked(nproc)
    if resume is not None:
        run = resume / "run.json"
        if not run.exists():
            raise UserError(f"--resume {resume}: no run.json there; not a goodfit run directory")
        saved = json.loads(run.read_text())
        r = load(str(resume / "recipe.yaml"), overrides)
        dest, optimizer = resume, optimizer or saved["arms"]
        seed = saved["seed"] if seed is None else seed
        data_dir = data_dir or saved.get("data_dir")
        base = base or Path(saved["base"])
    else:
        if recipe is None or base is None:
            raise UserError("--base and --recipe are required (or --resume DIR)")
        r = load(recipe, overrides)
        dest = out_dir or default_out(r.name, "finetune")
    report = runner.finetune(
        r, base, dest, arms=optimizer or None, device=device, seed=seed, data_dir=data_dir,
        events_for=lambda arm: RichEvents(arm, primary_metrics(r)), log=log,
        resume=resume is not None, overwrite=overwrite, wise=not no_wise,
        gate=make_gate(r, gate, max_old_drop, max_nfr), junit=junit)
    if report:  # rank 0
        print_report(report, dest)
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


def make_gate(r, gate: Path | None, max_old_drop: float | None, max_nfr: float | None):
    from goodfit_cli.gate import gate_from_flags, load_gate
    from goodfit_cli.objectives import OBJECTIVES

    if gate is not None:
        if max_old_drop is not None or max_nfr is not None:
            raise UserError("give either --gate or --max-old-drop/--max-nfr, not both")
        return load_gate(gate)
    if max_old_drop is None and max_nfr is None:
        return None
    if max_nfr is not None and OBJECTIVES.get(r.old_task.loss).kind != "classification":
        raise UserError(f"--max-nfr needs a classification old task; {r.source} has "
                        f"old_task.loss {r.old_task.loss!r}")
    return gate_from_flags(max_old_drop, max_nfr, r.old_task.metrics[0])


@app.command()
@handled
def compare(
    base: Path = typer.Argument(..., help="Base checkpoint or run directory."),
    candidates: list[Path] = typer.Argument(..., help="Candidate checkpoints or run directories."),
    recipe: str = typer.Option(..., "--recipe", "-r"),
    gate: Optional[Path] = typer.Option(None, "--gate", help="gate.yaml with limits."),
    max_old_drop: Optional[float] = typer.Option(None, "--max-old-drop"),
    max_nfr: Optional[float] = typer.Option(None, "--max-nfr"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="JUnit XML: one case per candidate and limit."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o"),
    device: Optional[str] = typer.Option(None, "--device"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Regression report of candidates against a base; exit 3 when a gate is violated."""
    from goodfit_cli.compare import compare as run_compare
    from goodfit_cli.reporting import raise_on_gate_failure
    from goodfit_cli.rundir import prepare_out

    r = load(recipe, None)
    g = make_gate(r, gate, max_old_drop, max_nfr)
    dest = out_dir or default_out(r.name, "compare")
    prepare_out(dest, overwrite=overwrite, resume=False)
    report = run_compare(r, base, list(candidates), dest, gate=g, junit=junit, device=device,
                         data_dir=data_dir, log=log)
    print_report(report, dest)
    raise_on_gate_failure(report)


def print_report(report: dict[str, Any], dest: Path) -> None:
    out.print(summary_table(report))
    log(f"report: {dest / 'report.md'}  {dest / 'report.html'}")


@app.command("eval")
@handled
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    recipe: str = typer.Option(..., "--recipe", "-r"),
    device: Optional[str] = typer.Option(None, "--device"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    json_out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON here (default: eval-<recipe>.json beside the checkpoint)."),
    overrides: Optional[list[str]] = typer.Argument(None),
) -> None:
    """Evaluate a checkpoint on the recipe's old and new tasks; print and write the JSON."""
    from goodfit_cli import checkpoint as ckpt
    from goodfit_cli import runner

    r = load(recipe, overrides)
    res = runner.evaluate_checkpoint(r, checkpoint, device=device, data_dir=data_dir,
                                     log=lambda m: err.print(m, highlight=False))
    text = json.dumps(res, indent=2)
    dest = json_out or checkpoint.parent / f"eval-{r.name}.json"
    ckpt.atomic_write_bytes(dest, (text + "\n").encode())
    typer.echo(text)  # stdout stays pure JSON; where it went is said on stderr
    err.print(f"written to {escape(str(dest))}", highlight=False, soft_wrap=True)


@app.command()
@handled
def validate(recipes: list[Path] = typer.Argument(..., help="Recipe files to check.")) -> None:
    """Check recipes without running them: schema, registry names, model arguments."""
    import torch

    from goodfit_cli.data import DATASETS
    from goodfit_cli.models import build_model
    from goodfit_cli.registry import suggest

    failed = 0
    for path in recipes:
        try:
            r = load(str(path), None)
            if r.data.name not in DATASETS:
                raise UserError(f"{path}: data.name: unknown dataset {r.data.name!r}"
                                f"{suggest(r.data.name, DATASETS.names())}")
            with torch.device("meta"):  # shapes only: a huge model allocates nothing
                build_model(r.model.name, r.model.args, where=f"{path}: model")
            out.print(f"[green]ok[/]  {escape(str(path))}  ({escape(r.name)})", highlight=False,
                      soft_wrap=True)
        except UserError as e:
            failed += 1
            err.print(f"[red]bad[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(2)


@app.command("recipes")
@handled
def list_recipes() -> None:
    """List the shipped recipes."""
    from goodfit_cli.recipe import load_recipe

    t = Table(title=f"recipes in {RECIPES_DIR}")
    t.add_column("name")
    t.add_column("file")
    t.add_column("description")
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        try:
            r = load_recipe(p)
            t.add_row(r.name, p.name, r.description)
        except UserError as e:
            t.add_row(p.stem, p.name, f"[red]invalid: {e}")
    out.print(t)


@data_app.command("summary")
@handled
def data_summary(
    recipe: str = typer.Option(..., "--recipe", "-r"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the recipe's data_dir or $GOODFIT_DATA)."),
    as_json: bool = typer.Option(False, "--json"),
    overrides: Optional[list[str]] = typer.Argument(None),
) -> None:
    """Samples and classes per task and split: what a recipe will train and evaluate on."""
    from goodfit_cli.data import build_data

    r = load(recipe, overrides)
    tasks = build_data(r.data.name, r.data.args, seed=r.seed, data_dir=data_dir or r.data_dir,
                       where=f"{r.source}: data")
    summary = {name: t.summary() for name, t in tasks.items()}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    t = Table(title=f"{r.name}: data")
    for c in ("task", "kind", "split", "samples", "classes"):
        t.add_column(c)
    for name, s in summary.items():
        for split in ("train", "test"):
            t.add_row(name, s["kind"], split, str(s[split]["samples"]), str(s[split]["classes"] or "-"))
    out.print(t)


@data_app.command("motion-synth")
@handled
def data_motion_synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Directory; train/ and test/ shards go inside."),
    agents: str = typer.Option("car", "--agents", help="Target agents: car | pedestrian."),
    scenes: int = typer.Option(1000, "--scenes", help="Training scenes."),
    test_scenes: Optional[int] = typer.Option(None, "--test-scenes", help="Test scenes [default: scenes/10]."),
    seed: int = typer.Option(0, "--seed"),
    shard_size: int = typer.Option(1000, "--shard-size", help="Scenes per shard file."),
    max_agents: int = typer.Option(16, "--max-agents", help="Nearby agents kept per scene."),
    polylines: int = typer.Option(64, "--polylines", help="Map polylines kept per scene."),
    points: int = typer.Option(10, "--points", help="Points per map polyline (2 m apart)."),
    lights: int = typer.Option(4, "--lights", help="Traffic lights kept per scene."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace shards already in --out."),
) -> None:
    """Synthetic driving scenarios (10 Hz, 1.1 s history, 8 s future) as safetensors shards."""
    from goodfit_cli.data.motion_synth import write_synthetic

    counts = write_synthetic(out_dir, agents, scenes, test_scenes, seed,
                             (max_agents, polylines, points, lights), shard_size, overwrite, log)
    log(f"wrote {counts['train']} train and {counts['test']} test {agents} scenarios to {out_dir}")


@app.command()
@handled
def demo(
    quick: bool = typer.Option(False, "--quick", help="A shortened run (well under a minute)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """The toy recipe end to end: pretrain, fine-tune (baseline, head only, GoodFit), report."""
    from goodfit_cli import runner
    from goodfit_cli.recipe import load_recipe

    over = QUICK_OVERRIDES if quick else DEMO_OVERRIDES
    r = load_recipe(RECIPES_DIR / "toy.yaml", over)
    dest = out_dir or default_out("demo", "quick" if quick else "full")
    log(f"[bold]goodfit demo[/]: {escape(r.description)}", markup=True)
    log(f"step 1/2: pretrain the base on the old task -> {dest / 'base'}")
    runner.pretrain(r, dest / "base", device=device, events=RichEvents("pretrain", primary_metrics(r)),
                    log=log)
    log(f"step 2/2: fine-tune on the new task with {', '.join(r.finetune.arms)}")
    report = runner.finetune(r, dest / "base" / "model.safetensors", dest / "finetune",
                             device=device, log=log,
                             events_for=lambda arm: RichEvents(arm, primary_metrics(r)))
    print_report(report, dest / "finetune")


# the demo shortens only the base's pretraining (10 000 → 3 000 batches, same decay per run);
# the fine-tuning stage is the seed's: 1 500 batches at lr 5e-4, ×0.95 every 100
DEMO_OVERRIDES = ["pretrain.steps=3000", "pretrain.scheduler.args.step_size=150"]
QUICK_OVERRIDES = ["data.args.n_train=4000", "data.args.n_test=1000", "pretrain.steps=300",
                   "pretrain.scheduler.args.step_size=100", "finetune.steps=60",
                   "finetune.scheduler.args.step_size=20", "eval.every=20",
                   "model.args.hidden=[128, 128]"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
