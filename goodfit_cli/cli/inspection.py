"""The commands that measure and inspect: compare, eval, validate, optimizers, recipes, list,
data summary, data motion-synth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from goodfit_cli.cli.base import (
    BASE_FOLDER,
    DATA_DIR,
    DEVICE,
    EXAMPLES,
    GATE,
    JUNIT,
    MAX_NEW,
    MAX_NFR,
    MAX_OLD,
    MAX_OLD_DROP,
    MAX_OLD_DROP_REL,
    MIN_NEW,
    MIN_OLD,
    OVERRIDES,
    OVERWRITE,
    RECIPE,
    UserError,
    app,
    bounds,
    data_app,
    default_out,
    err,
    handled,
    load,
    log,
    print_report,
    say_gate,
    show,
    ui_for,
)
from goodfit_cli.cli.console import out, say


@app.command(epilog=EXAMPLES["compare"])
@handled
def compare(
    base: Path = typer.Argument(..., help="Base checkpoint or run directory."),
    candidates: list[Path] = typer.Argument(..., help="Candidate checkpoints or run directories."),
    recipe: str = RECIPE,
    gate: Optional[Path] = GATE,
    max_old_drop: Optional[float] = MAX_OLD_DROP,
    max_nfr: Optional[float] = MAX_NFR,
    min_old: Optional[list[str]] = MIN_OLD,
    max_old: Optional[list[str]] = MAX_OLD,
    min_new: Optional[list[str]] = MIN_NEW,
    max_new: Optional[list[str]] = MAX_NEW,
    max_old_drop_rel: Optional[list[str]] = MAX_OLD_DROP_REL,
    junit: Optional[Path] = JUNIT,
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Report directory (default: runs/<recipe>-compare-<time>)."),
    device: Optional[str] = DEVICE,
    data_dir: Optional[str] = DATA_DIR,
    overwrite: bool = OVERWRITE,
) -> None:
    """Regression report of candidates against a base; exit 3 when a gate is violated."""
    from goodfit_cli.workflows.compare import compare as run_compare
    from goodfit_cli.workflows.reporting import gate_for, raise_on_gate_failure
    from goodfit_cli.trainer.session import Place

    r = load(recipe, None)
    g = gate_for(r, gate, max_old_drop, max_nfr, bounds(
        min_old, max_old, min_new, max_new, max_old_drop_rel), junit=junit)
    say_gate(g)
    dest = out_dir or default_out(r.name, "compare")
    report = run_compare(r, base, list(candidates), dest, gate=g, junit=junit,
                         place=Place(device, None, data_dir), ui=ui_for(r.primary, units=r.units),
                         overwrite=overwrite)
    if not report:  # a rank other than 0 under torchrun
        return
    print_report(report, dest)
    raise_on_gate_failure(report)


@app.command("eval", epilog=EXAMPLES["eval"])
@handled
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint (.safetensors) to evaluate."),
    recipe: str = RECIPE,
    device: Optional[str] = DEVICE,
    data_dir: Optional[str] = DATA_DIR,
    json_out: Optional[Path] = typer.Option(None, "--out", "-o", help=(
        "Write the JSON here (default: eval-<recipe>.json beside the checkpoint; "
        "eval-<folder>-<recipe>.json beside a checkpoint folder).")),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Evaluate a checkpoint on the recipe's old and new tasks; print and write the JSON."""
    from goodfit_cli.workflows.evaluate import evaluate
    from goodfit_cli.trainer.session import Place
    from goodfit_cli.trainer.stage import Ui

    r = load(recipe, overrides)
    done = evaluate(r, checkpoint, Place(device, None, data_dir),
                    Ui(lambda m: say(Text(m), err)), out=json_out)  # piped: one line each
    if done is None:  # a rank other than 0 under torchrun
        return
    res, dest = done
    typer.echo(json.dumps(res, indent=2))  # stdout stays pure JSON; where it went is said on stderr
    err.print(f"written to {escape(str(dest))}", highlight=False, soft_wrap=True)


@app.command(epilog=EXAMPLES["validate"], help=(
    "Check recipes without running them (with --data, also their data against the model).\n\n"
    "Checked: the schema, registry names, model arguments, each arm's optimizer and schedule; "
    "with --data the data against the model too: everything that would fail at run time "
    "before training."))
@handled
def validate(recipes: list[str] = typer.Argument(
        ..., help="Recipe files to check, then key.sub=value overrides applied to each."),
        data: bool = typer.Option(False, "--data", help="Also read the data and check that the "
                                  "model takes it (widths, label ids, dtypes)."),
        data_dir: Optional[str] = DATA_DIR,
        base: Optional[Path] = BASE_FOLDER) -> None:
    """`goodfit validate` (its help above)."""
    from goodfit_cli.workflows.validate import validate as check

    overrides = [a for a in recipes if "=" in a]
    failed = 0
    for path in (Path(a) for a in recipes if "=" not in a):
        try:
            r = check(path, overrides, data=data, data_dir=data_dir, base=base)
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

    Each NAME is an arm (`--optimizer NAME`).

    `lookahead_NAME` is timm's Lookahead over it, and `goodfit:NAME` is GoodFit over it.
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
    kind: Optional[str] = typer.Argument(None, help="models, datasets, objectives, metrics, arms, optimizers or schedulers (default: all)."),
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
    recipe: str = RECIPE,
    data_dir: Optional[str] = DATA_DIR,
    base: Optional[Path] = BASE_FOLDER,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Samples and classes per task and split: what a recipe will train and evaluate on."""
    from goodfit_cli.workflows.datasets import notes, summary as data_of

    r = load(recipe, overrides)
    summary = data_of(r, data_dir, base)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    t = Table(title=f"{r.name}: data")
    for c in ("task", "kind", "split", "samples", "classes"):
        t.add_column(c)
    for name, s in summary.items():
        for split in ("train", "val", "test"):
            label = split if split != "val" else f"val ({s['validation']['source']})"
            t.add_row(name, s["kind"], label, str(s[split]["samples"]),
                      str(s[split]["classes"] or "-"))
    show(t)
    for line in notes(summary):  # thin validation classes, test samples that are training's
        log(line)


@data_app.command("motion-synth", epilog=EXAMPLES["data motion-synth"])
@handled
def data_motion_synth(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Directory; train/ and test/ shards go inside."),
    agents: str = typer.Option("car", "--agents", help="Target agents: car | pedestrian."),
    scenes: int = typer.Option(1000, "--scenes", help="Training scenes."),
    test_scenes: Optional[int] = typer.Option(
        None, "--test-scenes", help="Test scenes (default: --scenes/10, at least 1)."),
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
