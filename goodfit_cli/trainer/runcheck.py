"""Which run this is: the identity a pretrain, a fine-tuning run and each of its arms record,
and the checks that refuse to resume or reuse anything recorded by a different run.

See goodfit_cli.io.identity for what an identity holds and how a difference is worded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from goodfit_cli.core.distributed import dist_info
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.io.identity import check_identity, claim, comparable, describe_difference
from goodfit_cli.io.rundir import RunResult, load_result, moved_data_dir, read_json, state_files
from goodfit_cli.models import unwrap
from goodfit_cli.objectives import recomputed
from goodfit_cli.recipe import Recipe
from goodfit_cli.trainer.measured import data_digest


def run_identity(recipe: Recipe, seed: int, base_sha256: str | None,
                 version: str, arms: list[str] | None = None) -> dict[str, Any]:
    """The identity shared by every arm of one run (the recipe after overrides as the run
    records it, `Recipe.recorded`, as JSON); the code that runs it: goodfit's `version` and
    its source as this process runs it, hashed (core/source.py)."""
    return {"goodfit_version": version, KEY: source_sha256(), "base_sha256": base_sha256,
            "recipe": json.loads(json.dumps(recipe.recorded(arms), default=str)), "seed": seed,
            "world_size": dist_info()[1], "torch_threads": torch.get_num_threads()}


def claim_stage(folder: Path, recipe: Recipe, seed: int, arm: str, meta: dict[str, Any],
                log: Callable[[str], None], model: nn.Module | None = None,
                data: dict[str, str] | None = None) -> None:
    """Record this stage's identity in `folder`, or refuse if its states or results are another's.
    `meta` is the stage's checkpoint metadata (goodfit_version, base_sha256); `model` the model
    it trains (a transformers model's config is part of the identity: `model_config`); `data`
    what it reads (`data_record`: a pretrain has no run.json to record it)."""
    finished = (folder / "summary.json").exists()
    has_work = bool(state_files(folder)) or finished or (folder / "model.safetensors").exists()
    ident = stage_identity(recipe, seed, arm, meta, model)  # trained on: its record completed
    claim(folder, {**ident, "data": data} if data else ident, has_work, log, not finished)


def model_config(model: nn.Module | None) -> str | None:
    """A transformers model's config (what its folder's config.json says it computes: the
    weights' sha256 does not cover it), hashed; None for any other model."""
    config = getattr(unwrap(model), "config", None) if model is not None else None
    if not hasattr(config, "to_dict"):
        return None
    blob = json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def stage_identity(recipe: Recipe, seed: int, arm: str, meta: dict[str, Any],
                   model: nn.Module | None = None) -> dict[str, Any]:
    ident = run_identity(recipe, seed, meta.get("base_sha256"), meta.get("goodfit_version", ""))
    config = model_config(model)
    return {**ident, "arm": arm, **({"base_config": config} if config else {})}


def state_identity(recipe: Recipe, seed: int, arm: str, meta: dict[str, Any],
                   model: nn.Module | None = None) -> str:
    """What decides a stage's training (its recipe as compared, seed, base, arm, a transformers
    model's config), hashed: each resumable state records it, so a state another run wrote is
    never resumed (one copied into the folder: its arm's identity.json is the folder's, the
    state is not)."""
    kept = {k: v for k, v in comparable(stage_identity(recipe, seed, arm, meta, model)).items()
            if k in ("recipe", "seed", "base_sha256", "arm", "base_config")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def data_record(s: Any) -> dict[str, str]:
    """What a run records of the data it read (run.json "data"): the contents of every split
    of both tasks, hashed (trainer/measured.py `data_digest`); of the test and validation
    splits alone when the training split is streamed (not held in memory)."""
    whole = data_digest(s, ("train", "val", "test"))
    if whole is not None:
        return {"sha256": whole, "of": "train, val and test splits"}
    return {"sha256": data_digest(s) or "not checkable", "of": "val and test splits"}


def check_resumed_run(run: Path, current: dict[str, Any], log: Callable[[str], None],
                      arms: Iterable[Path] = (), on: tuple[str, ...] | None = None,
                      data: dict[str, str] | None = None) -> dict[Path, RunResult]:
    """`--resume RUN`: RUN's recorded identity (run.json) must be the current one, the data it
    read the data this command reads (`data`: `data_record`; a run that recorded none is not
    checked), and each finished arm among `arms` (folders) measured on what this command
    reads (`on`: `check_finished_arm`) and resting on the files it recorded (`load_result`).
    Returns those finished arms, loaded: what the resume reuses (its name checked there)."""
    try:
        saved = json.loads((run / "run.json").read_text()).get("identity")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{run / 'run.json'}: cannot read the run's record ({e}); the run folder "
                        "is damaged, start a new run with --out") from None
    if not isinstance(saved, dict):
        raise UserError(f"{run / 'run.json'} records no identity (written by an older goodfit?), "
                        "so the run cannot be checked before resuming; start afresh with "
                        "--overwrite")
    check_identity(run, saved, current, log)
    had = json.loads((run / "run.json").read_text()).get("data")
    if data is not None and isinstance(had, dict) and had != data:
        raise UserError(f"{run / 'run.json'}: the run read other data than this command reads "
                        f"(its {had.get('of')} hash to {str(had.get('sha256'))[:12]}…, now "
                        f"{data['sha256'][:12]}…): a resumed arm would train or be measured on "
                        "both; resume with the data it began with, or start afresh with "
                        "--overwrite")
    reused = {}
    for folder in arms:
        if (folder / "summary.json").exists():
            check_finished_arm(folder, on)
            if (folder / "model.safetensors").exists():  # reused: every file it rests on is
                reused[folder] = load_result(folder, recomputed)  # the one recorded
    return reused


def check_finished_arm(folder: Path, on: tuple[str, ...] | None) -> None:
    """Refuse to reuse a finished arm of a resumed run whose measurements were made on other
    data than this command reads (`on`: trainer/measured.py `measured_on` for the base as
    loaded, whose inputs every arm keeps): its numbers would sit beside ones measured afresh."""
    try:
        had = json.loads((folder / "summary.json").read_text()).get("measured_on")
    except (OSError, ValueError, AttributeError):
        had = None
    if on is None or had not in on:
        raise UserError(f"{folder / 'summary.json'}: measured on other test or validation data, "
                        "inputs or objectives than this command reads (were the data changed "
                        "since the run began?) or does not say what on; a resumed run reuses "
                        "only what it can check: start afresh with --overwrite")


def check_run_source(run: Path, saved: dict[str, Any], recipe: Recipe,
                     s: Any = None) -> None:
    """A command that measures a finished run's arm anew from the run's own recipe.yaml
    (`goodfit wise`): that recipe must still be the one run.json records (its identity's
    recipe, less data_dir and arms) and, given the session `s`, the data it reads the data the
    run read (`data_record`; hashed once per command: a search's trials hash nothing again).
    A run that recorded neither is not checked."""
    where = run / "recipe.yaml"
    was = saved.get("identity") if isinstance(saved.get("identity"), dict) else {}
    if s is None and isinstance(was.get("recipe"), dict):
        now = json.loads(json.dumps(recipe.recorded(), default=str))
        diff = describe_difference(run, comparable({"recipe": was["recipe"]}),
                                   comparable({"recipe": now}))
        if diff:
            raise UserError(f"{diff} ({where} was changed after the run: its run.json records "
                            "the recipe it ran); put it back as it ran")
    had = saved.get("data")
    if s is not None and isinstance(had, dict) and had != data_record(s):
        raise UserError(f"{run / 'run.json'}: the run read other data than {where} reads now "
                        f"(its {had.get('of')} hash to {str(had.get('sha256'))[:12]}…): the "
                        "arm would be measured on data it was not chosen on; put the run's "
                        "data back as it was")


def run_data_moved(recipe: Recipe, given: str | None,
                   log: Callable[[str], None]) -> tuple[str | None, dict | None]:
    """A run's own recipe.yaml (beside its run.json) given to compare or eval with no
    --data-dir, after the project folder moved: the data folder it names is gone, so the one
    moved with the run (io/rundir.py moved_data_dir), and the data record (run.json "data")
    the data read there must hash to (`check_moved_data`); (None, None) otherwise."""
    if given or not recipe.data_dir or Path(recipe.data_dir).exists():
        return None, None
    run = Path(recipe.source).parent
    saved = read_json(run / "run.json") if (run / "run.json").is_file() else {}
    if not saved or saved.get("data_dir") != recipe.data_dir:
        return None, None
    there = str(moved_data_dir(run, saved, log))
    return (there, saved["data"]) if there != recipe.data_dir else (None, None)


def check_moved_data(s: Any, had: dict | None, where: str) -> None:
    """Refuse a data folder taken where it moved with its run (`run_data_moved`) unless the
    data read there are what the run recorded (`data_record`)."""
    if had is not None and data_record(s) != had:
        raise UserError(f"{where}: the data read from {s.data_dir} (moved with the run) are not "
                        f"the data the run read (its {had.get('of')} hash to "
                        f"{str(had.get('sha256'))[:12]}…); give the run's data with --data-dir")

