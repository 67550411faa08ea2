"""`goodfit compare`: turn checkpoints or run directories into one gated regression report.

A side (the base or a candidate) is a `.safetensors` checkpoint, an arm or pretrain directory
(model.safetensors + summary.json + predictions.safetensors), or a fine-tuning run directory
(run.json): as BASE it stands for its base model, as a CANDIDATE for each of its arms. Stored
metrics and predictions are reused when the checkpoint's sha256 matches the one recorded beside
them and the predictions (and training curve) match the sha256 recorded with them; otherwise the
checkpoint is evaluated on the recipe's test splits, and the log says why.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goodfit_cli.core.distributed import is_main
from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.outputs import check_outputs
from goodfit_cli.io.rundir import load_predictions, read_json, read_jsonl
from goodfit_cli.io.runlock import held, open_run
from goodfit_cli.models import build_model
from goodfit_cli.recipe import Recipe
from goodfit_cli.report import RunSide
from goodfit_cli.report.gate import Gate
from goodfit_cli.trainer.session import Place, Session, load_checkpoint, open_session, task_kinds
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.training import arm_dirname
from goodfit_cli.workflows.reporting import finish_report


@dataclass
class Side:
    name: str
    checkpoint: Path
    stored: Path | None = None  # a JSON file with "sha256" and "metrics", beside predictions
    sha256: str | None = None  # of the checkpoint, once read


def _sides(path: Path, as_base: bool) -> list[Side]:
    if not path.exists():
        raise UserError(f"not found: {path} (give a .safetensors checkpoint or a run directory)")
    if path.is_file():
        d = path.parent
        for meta in (d / "summary.json", d / "metrics.json"):
            if meta.exists():
                return [Side(d.name if d.name != "base" else "base", path, meta)]
        return [Side(path.stem if path.stem != "model" else d.name, path)]
    if (path / "run.json").exists():  # a fine-tuning run directory
        if as_base:
            base = read_json(path / "base" / "metrics.json")
            return [Side("base", Path(str(base.get("checkpoint", ""))), path / "base" / "metrics.json")]
        arms = read_json(path / "run.json").get("arms")
        if not isinstance(arms, list) or not all(isinstance(a, str) for a in arms):
            raise UserError(f"{path / 'run.json'}: no list of arms; the run folder is damaged")
        return [Side(a, path / arm_dirname(a) / "model.safetensors",
                     path / arm_dirname(a) / "summary.json") for a in arms]
    if (path / "model.safetensors").exists():
        return _sides(path / "model.safetensors", as_base)
    raise UserError(f"{path}: not a checkpoint or a goodfit run directory "
                    "(no model.safetensors or run.json)")


def _recorded(side: Side) -> dict:
    """The side's stored record (summary.json or base/metrics.json); {} when absent or damaged."""
    try:
        meta = json.loads(side.stored.read_text()) if side.stored else {}
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _unchanged(side: Side, name: str) -> bool:
    """Whether the file `name` beside the side's record still has the sha256 recorded for it."""
    path = side.stored.parent / name
    want = (_recorded(side).get("files_sha256") or {}).get(name)
    return bool(want) and path.is_file() and sha256_file(path) == want


def _reuse(side: Side, sha256: str, log) -> tuple[dict, dict] | None:
    """Stored (metrics, predictions) when they belong to exactly this checkpoint and the
    predictions file is the one recorded with them."""
    meta = _recorded(side)
    if meta.get("sha256") != sha256 or not isinstance(meta.get("metrics"), dict):
        return None
    if not _unchanged(side, "predictions.safetensors"):
        log(f"{side.name}: {side.stored.parent / 'predictions.safetensors'} does not match the "
            f"sha256 recorded in {side.stored.name} (changed, missing or never recorded); "
            "evaluating again")
        return None
    preds = load_predictions(side.stored.parent / "predictions.safetensors")
    return (meta["metrics"], preds) if preds else None


def compare(recipe: Recipe, base: Path, candidates: list[Path], out: Path, *,
            gate: Gate | None = None, junit: Path | None = None, place: Place | None = None,
            ui: Ui | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Measure the base and every candidate (each checkpoint read and hashed once), then build,
    gate and write the report into `out` (locked; `--overwrite` moves its old content aside).
    Under torchrun rank 0 does all of it, without a process group; the other ranks return an
    empty report at once."""
    ui = ui or Ui()
    if not is_main():
        return {}
    inputs = {"base": base} | {f"candidate {c}": c for c in candidates}
    check_outputs({"--junit": junit}, {"--out": out}, inputs)
    lock, moved = open_run(out, overwrite=overwrite, resume=False, resume_hint="")
    if moved is not None:
        ui.log(f"--overwrite: the previous content of {out} was moved to {moved} (kept)")
    with held(lock):
        return _compare(recipe, base, candidates, out, (gate, junit, place), ui)


def _compare(recipe: Recipe, base: Path, candidates: list[Path], out: Path,
             options: tuple[Gate | None, Path | None, Place | None], ui: Ui) -> dict[str, Any]:
    gate, junit, place = options
    t0 = time.perf_counter()
    base_side = _sides(base, as_base=True)[0]
    cands = [s for c in candidates for s in _sides(c, as_base=False)]
    names = [c.name for c in cands]
    for i, c in enumerate(cands):  # distinct names for the report
        if names.count(c.name) > 1:
            c.name = f"{c.name}#{i + 1}"
    session: Session | None = None  # the recipe's data, built only if something must be evaluated
    if recipe.model is None:
        raise UserError(f"{recipe.at('model')}: compare needs the recipe to name its model; use "
                        "the recipe.yaml of a run (it names the model it built)")
    model = build_model(recipe.model.name, recipe.model.args, where=recipe.at("model"))

    def measure(side: Side) -> tuple[dict, dict]:
        nonlocal session
        if not side.checkpoint.exists():
            raise UserError(f"checkpoint not found: {side.checkpoint}")
        loaded = load_checkpoint(model, side.checkpoint)  # the recipe's architecture, or exit 2
        if loaded.messages:
            raise UserError(f"{side.checkpoint}: does not fit the recipe's model "
                            f"({loaded.messages[0]}); compare needs checkpoints of the recipe's "
                            "architecture")
        side.sha256 = loaded.sha256
        stored = _reuse(side, loaded.sha256, ui.log)
        if stored is not None:
            ui.log(f"{side.name}: reusing stored metrics and predictions")
            return stored
        if session is None:
            session = open_session(recipe, place, join=False)
        evaluated = session.model()
        evaluated.load_state_dict(model.state_dict())
        ui.log(f"{side.name}: evaluating {side.checkpoint}")
        return session.evaluate(evaluated, with_predictions=True)

    bm, bp = measure(base_side)
    base_run = RunSide("base", str(base_side.checkpoint), bm, bp)
    arms = []
    for c in cands:
        m, p = measure(c)
        curve = read_jsonl(c.checkpoint.parent / "metrics.jsonl") \
            if c.stored and _unchanged(c, "metrics.jsonl") else []
        arms.append(RunSide(c.name, str(c.checkpoint), m, p, curve))
    prov = {"command": "compare", "recipe": recipe.name, "recipe_sha256": recipe.sha256,
            "base_sha256": base_side.sha256, "wall_s": round(time.perf_counter() - t0, 3)}
    try:
        return finish_report(recipe, out, base_run, arms, task_kinds(recipe), prov, gate, junit)
    except ValueError as e:  # stored predictions from runs on different test data
        raise UserError(f"cannot compare: {e} (were the runs made with another recipe or data? "
                        "pass checkpoints to evaluate them on this recipe)") from None
