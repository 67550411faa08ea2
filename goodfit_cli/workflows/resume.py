"""`goodfit finetune --resume RUN`: the job that continues RUN from its own run.json and
recipe.yaml (`resume_job`: a base and data folder moved together with the run are found where
they are now, io/rundir.py `moved_with_run`), and the arguments it refuses."""

from __future__ import annotations

import json
from pathlib import Path

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.identity import comparable, describe_difference
from goodfit_cli.io.rundir import moved_base, moved_data_dir
from goodfit_cli.recipe import Recipe, load_recipe
from goodfit_cli.report.gate import recorded_gate
from goodfit_cli.trainer.session import Place
from goodfit_cli.workflows.finetune import FinetuneJob
from goodfit_cli.workflows.recipes import load


def resume_job(run: Path, overrides: list[str] | None, place: Place, *,
               arms: list[str] | None = None,
               base: Path | None = None) -> tuple[FinetuneJob, Place]:
    """The job and place that continue the run in `run`, from its run.json and recipe.yaml."""
    if not (meta := run / "run.json").exists():  # or a run killed before it wrote its record
        raise UserError(f"--resume {run}: no run.json there; not a goodfit run directory, or one "
                        "whose first command stopped before the run began (use --overwrite)")
    try:
        saved = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{meta}: cannot read the run's record ({e}); the run folder is damaged, "
                        "start a new run with --out") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("arms"), list) or not all(
            isinstance(a, str) for a in saved["arms"]) or not isinstance(saved.get("base"), str) \
            or type(saved.get("seed")) is not int or type(saved.get("data_dir") or "") is not str:
        raise UserError(f"{meta}: no list of arms, base, seed or data folder recorded; the run "
                        "folder is damaged, start a new run with --out")
    recipe = load_recipe(run / "recipe.yaml", overrides or [])
    if not arms and any(o.partition("=")[0].strip() == "finetune.arms" for o in overrides or []):
        arms = list(recipe.finetune.arms)  # the arms override, as --optimizer (before: ignored)
    notes: list[str] = []  # a base or data moved with the run: said once the run begins
    place = Place(place.device, saved["seed"] if place.seed is None else place.seed,
                  place.data_dir or (str(moved_data_dir(run, saved, notes.append))
                                     if saved.get("data_dir") else None))
    base = base or moved_base(run, saved, "base", (saved.get("identity") or {}).get(
        "base_sha256"), notes.append)
    job = FinetuneJob(recipe, base, run, arms or saved["arms"], resume=True, notes=notes)
    job.gate = recorded_gate(saved.get("gate"), f"{meta}: gate")  # what it ran with: the
    # gate a resume keeps unless it is given another; its WiSE-FT curve, unless --no-wise
    job.wise = saved.get("wise", True) is not False
    return job, place


def check_resume_args(run: Path, resumed: Recipe, recipe: str | None, out: Path | None,
                      overwrite: bool, overrides: list[str] | None) -> None:
    """`--resume RUN` continues RUN in RUN with RUN/recipe.yaml: a `--out` elsewhere, an
    `--overwrite`, or a `--recipe` that is not that recipe (after the same overrides) would be
    silently ignored, so each is refused. The same command plus `--resume RUN` passes."""
    if out is not None and out.resolve() != run.resolve():
        raise UserError(f"--out {out} conflicts with --resume {run}: a resumed run writes into "
                        "its own folder; drop --out")
    if overwrite:
        raise UserError(f"--overwrite conflicts with --resume {run}: --resume continues the run, "
                        "--overwrite starts it afresh; pass one of them")
    if recipe is None:
        return
    given = json.loads(json.dumps(load(recipe, overrides).raw, default=str))
    saved = json.loads(json.dumps(resumed.raw, default=str))
    if "model" not in given:  # the run took its model from the base folder's config.json
        saved.pop("model", None)
    try:  # data args the run took from the base folder (size, tokenizer, ...) and --recipe lacks
        adopted = json.loads((run / "run.json").read_text())["input"].get("from_config") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        adopted = {}
    given_args = (given.get("data") or {}).get("args") or {}
    for key in adopted:
        if key not in given_args:
            ((saved.get("data") or {}).get("args") or {}).pop(key, None)
    diff = describe_difference(run, comparable({"recipe": saved}), comparable({"recipe": given}))
    if diff:
        raise UserError(f"--recipe {recipe} is not the recipe of --resume {run}: {diff}; drop "
                        f"--recipe (a resumed run uses {run / 'recipe.yaml'})")
