"""What every command shares: the Typer apps, the exit-code mapping, recipe loading, the
terminal UI for a workflow, output locations, and torchrun relaunching."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Literal

import typer
from rich.markup import escape

from goodfit_cli import __version__
from goodfit_cli.cli.console import (
    DISPLAY,
    RichEvents,
    WorkProgress,
    err,
    log,
    show,
    summary_table,
)
from goodfit_cli.cli.usage import EXAMPLES, Group
from goodfit_cli.core.errors import Diverged, GateFailure, Interrupted, UserError, signals_raise
from goodfit_cli.core.progress import listening
from goodfit_cli.core.text import printable
from goodfit_cli.core.units import RATE, value_text

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


def out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError (a GPU), MemoryError, or the CPU allocator's refusal (a
    RuntimeError "can't allocate memory"); told by name, so the CLI imports no torch."""
    return (type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError)
            or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e)))


def first_rank() -> bool:
    """Whether this is the process that speaks: rank 0 under torchrun, or the only one."""
    return os.environ.get("RANK", "0") == "0"


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to exit codes: UserError 2, out of memory 2, GateFailure 3, interruption
    130/143, bug 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            # long reads, evaluations shown (core/progress.py); a signal outside training raises
            with signals_raise(), listening(WorkProgress()):
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
            if first_rank():  # said once under torchrun (before: once per process)
                err.print(f"[yellow]interrupted[/]: state saved in {escape(str(e.run_dir))}. "
                          f"To resume, run {escape(e.resume)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt as e:  # before anything was saved (a SIGTERM too: 143)
            if first_rank():  # said once under torchrun
                err.print("[yellow]interrupted[/] before anything was saved: run the same "
                          "command again")
            raise typer.Exit(128 + getattr(e, "signum", 2))
        except Exception as e:  # a bug: say so, and show the traceback on request
            if out_of_memory(e):  # not a bug: a setting this machine cannot hold
                if STATE["debug"]:
                    traceback.print_exc()
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
                err.print(f"[bold red]out of memory:[/] {escape(first)}. Lower the stage's "
                          "batch_size (its accumulate: K keeps the effective batch), "
                          "eval.batch_size, or the model's size", highlight=False, soft_wrap=True)
                raise typer.Exit(2)
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


def ui_for(primary: dict[str, str], log_fn: Callable[[str], None] = log,
           units: dict[str, str] | None = None):
    """Log lines and a progress display per run, drawn by Rich (`units`: each primary
    metric's unit, so a rate reads in % as in the reports)."""
    from goodfit_cli.trainer.stage import Ui

    return Ui(log_fn, lambda label: RichEvents(label, primary, units=units))


def say_gate(gate) -> None:
    """A note per odd but possible bound of the gate a command runs with (a floor on an error)."""
    for note in gate.notes() if gate is not None else []:
        log(note)


LogFormat = Literal["text", "json"]
# Options several commands share: one definition each (Typer accepts a shared default object).
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda")
DATA_DIR = typer.Option(None, "--data-dir", help="Where the recipe's data lives (else the "
                        "recipe's data_dir, else the working directory; cifar100_lt also "
                        "reads $GOODFIT_DATA).")
SEED = typer.Option(None, "--seed", help="Initial weights and batch order (default: the recipe's seed).")
FT_SEED = typer.Option(None, "--seed", help=(
    "Seeds the batch order and new head rows (the other weights are the base's; generated data "
    "and the validation carving follow the recipe's seed; default: the recipe's seed)."))
NPROC = typer.Option(1, "--nproc", min=1, help="Processes (torchrun, DistributedDataParallel).")
MAX_OLD_DROP = typer.Option(None, "--max-old-drop", help="Gate: largest allowed drop of the old task's primary metric (absolute).")
MAX_NFR = typer.Option(None, "--max-nfr", help="Gate: largest allowed negative flip rate on the old task.")
MIN_OLD = typer.Option(None, "--min-old", metavar="METRIC=V", help="Gate: floor on an old-task metric, e.g. accuracy=0.9 (a value exactly at it passes); repeatable.")
MAX_OLD = typer.Option(None, "--max-old", metavar="METRIC=V", help="Gate: ceiling on an old-task metric, e.g. mse=0.05; repeatable.")
MIN_NEW = typer.Option(None, "--min-new", metavar="METRIC=V", help="Gate: floor on a new-task metric; repeatable.")
MAX_NEW = typer.Option(None, "--max-new", metavar="METRIC=V", help="Gate: ceiling on a new-task metric; repeatable.")
MAX_OLD_DROP_REL = typer.Option(None, "--max-old-drop-rel", metavar="METRIC=V", help="Gate: largest allowed drop of an old-task metric relative to the base's value, e.g. mse=0.1 (10 % worse); repeatable.")


def bounds(min_old, max_old, min_new, max_new, max_old_drop_rel) -> dict[str, list[str] | None]:
    """The METRIC=V gate flags as reporting.gate_for takes them."""
    return {"min_old": min_old, "max_old": max_old, "min_new": min_new, "max_new": max_new,
            "max_old_drop_rel": max_old_drop_rel}


LOG_FORMAT = typer.Option("text", "--log-format",
                          help="text: a progress bar on a terminal, else a plain line every "
                               "--progress-every seconds; json: one JSON object per line.")
RECIPE_HELP = "Recipe YAML (or a shipped name)."
RECIPE = typer.Option(..., "--recipe", "-r", help=RECIPE_HELP)
RECIPE_OR_RUNS = typer.Option(None, "--recipe", "-r", help=RECIPE_HELP)  # finetune: --resume has one
BASE = typer.Option(..., "--base", "-b", help="Base checkpoint (.safetensors).")
BASE_FOLDER = typer.Option(None, "--base", "-b", help="The model folder you will fine-tune: its "
                           "tokenizer, input size, class names and (with no model section) "
                           "architecture, as finetune --base takes them.")
BASE_OR_RUNS = typer.Option(None, "--base", "-b", help="Base checkpoint (.safetensors); with "
                            "--resume, the run's own by default.")
RUN_DIR = typer.Option(None, "--out", "-o",
                       help="Run directory (default: a new folder in runs/ stamped with the time).")
OVERWRITE = typer.Option(False, "--overwrite", help="Write into a non-empty --out (its old "
                         "content is moved aside and kept).")
GATE = typer.Option(None, "--gate", help="gate.yaml with limits: exit 3 if one is violated "
                    "(search: the trials' constraint, never an exit 3).")
JUNIT = typer.Option(None, "--junit", help="Write the gate as JUnit XML: one case per "
                     "candidate and limit.")
OVERRIDES = typer.Argument(None, help="key.sub=value overrides")
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
    # torchrun (cli/torchrun.py: quiet when a signal ends it, the processes say so)
    cmd = [sys.executable, "-m", "goodfit_cli.cli.torchrun", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "goodfit_cli", *argv]
    log(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} "
        f"-m goodfit_cli {' '.join(argv)}")
    p, signum = subprocess.Popen(cmd), None
    while True:
        try:
            code = p.wait()
            break
        except KeyboardInterrupt as e:  # SIGINT/SIGTERM here: torchrun passes it on, and its
            signum = getattr(e, "signum", 2)  # processes save their states (before: torchrun
            p.send_signal(signum)  # was killed, its processes left running without it)
    raise typer.Exit(code if signum is None else 128 + signum)


def close_count(k: int, noun: str) -> str:
    """'N other <noun>(s) within one standard error on validation': a last line's count of the
    close calls (report/verdict.py for a verdict's candidates, report/front.py for trials)."""
    return f"{k} other {noun}{'s' if k > 1 else ''} within one standard error on validation"


def _close_calls(ship: dict) -> str:
    """' (N other candidate(s) within one standard error on validation: see the report)'."""
    names = (ship.get("close_calls") or {}).get("names")
    return f" ({close_count(len(names), 'candidate')}: see the report)" if names else ""


def _numbers(ship: dict, metrics: list[str], units: dict[str, str]) -> str:
    """' (validation: old accuracy 95.12 %, new ade@8s 7.945 m; test: ...)': the shipped
    point's primary metrics on the split that chose it and on the one that confirms it."""

    def num(v: float, unit: str) -> str:  # a rate in % to 2 decimals, as the report's ship line
        return value_text(v, unit, 4 if unit == RATE else 5)

    parts = []
    for split, label in (("val", "validation"), ("test", "test")):
        p = ship.get(split)
        if p and None not in (p.get("old"), p.get("new")):
            parts.append(f"{label}: old {metrics[0]} {num(p['old'], units['old'])}, "
                         f"new {metrics[1]} {num(p['new'], units['new'])}")
    return f" ({'; '.join(parts)})" if parts else ""


def print_report(report: dict[str, Any], dest: Path) -> None:
    from goodfit_cli.report.reading import unit_in  # once a report exists (it imports torch)

    log(f"gate: {printable(report.get('gate_limits') or 'no gate')}")
    show(summary_table(report))
    chosen = report.get("verdict")
    metrics = (chosen or {}).get("metrics") or ["", ""]
    if chosen:  # chosen on validation (the report says which split and both numbers)
        ship = chosen["ship"]
        log("verdict (chosen on validation): " + (
            f"ship nothing, {chosen.get('none_because') or 'no candidate passes the gate'}; "
            "keep the base" if ship is None else
            f"ship {printable(ship['name'])}"  # a file name: no raw control characters
            + _numbers(ship, metrics, {t: unit_in(report, t, m)
                                       for t, m in zip(("old", "new"), metrics)})
            + _close_calls(ship)
            + ("; it FAILS the gate on test (the split the exit code reads)"
               if ship.get("passes_gate_test") is False else "")))
    log(f"report: {dest / 'report.md'}  {dest / 'report.html'}")
