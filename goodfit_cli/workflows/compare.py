"""`goodfit compare`: turn checkpoints or run directories into one gated regression report.

A side (the base or a candidate) is a `.safetensors` checkpoint, an arm or pretrain directory
(model.safetensors + summary.json + predictions.safetensors), or a fine-tuning run directory
(run.json): as BASE it stands for its base model, as a CANDIDATE for each of its arms. Stored
metrics and predictions are reused when the checkpoint's sha256 matches the one recorded beside
them; otherwise the checkpoint is evaluated on the recipe's test splits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.rundir import load_predictions, prepare_out, read_jsonl
from goodfit_cli.models import build_model
from goodfit_cli.recipe import Recipe
from goodfit_cli.report import RunSide
from goodfit_cli.report.gate import Gate
from goodfit_cli.training import arm_dirname
from goodfit_cli.workflows.reporting import finish_report
from goodfit_cli.workflows.session import Place, Session, load_checkpoint, open_session, task_kinds
from goodfit_cli.workflows.stage import Ui


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
            base = json.loads((path / "base" / "metrics.json").read_text())
            return [Side("base", Path(base["checkpoint"]), path / "base" / "metrics.json")]
        arms = json.loads((path / "run.json").read_text())["arms"]
        return [Side(a, path / arm_dirname(a) / "model.safetensors",
                     path / arm_dirname(a) / "summary.json") for a in arms]
    if (path / "model.safetensors").exists():
        return _sides(path / "model.safetensors", as_base)
    raise UserError(f"{path}: not a checkpoint or a goodfit run directory "
                    "(no model.safetensors or run.json)")


def _reuse(side: Side, sha256: str) -> tuple[dict, dict] | None:
    """Stored (metrics, predictions) when they belong to exactly this checkpoint."""
    if side.stored is None or not side.stored.exists():
        return None
    meta = json.loads(side.stored.read_text())
    preds = load_predictions(side.stored.parent / "predictions.safetensors")
    if meta.get("sha256") != sha256 or not preds:
        return None
    return meta["metrics"], preds


def compare(recipe: Recipe, base: Path, candidates: list[Path], out: Path, *,
            gate: Gate | None = None, junit: Path | None = None, place: Place | None = None,
            ui: Ui | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Measure the base and every candidate (each checkpoint read and hashed once), then build,
    gate and write the report into `out`."""
    ui = ui or Ui()
    t0 = time.perf_counter()
    prepare_out(out, overwrite=overwrite, resume=False)
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
        stored = _reuse(side, loaded.sha256)
        if stored is not None:
            ui.log(f"{side.name}: reusing stored metrics and predictions")
            return stored
        if session is None:
            session = open_session(recipe, place)
        evaluated = session.model()
        evaluated.load_state_dict(model.state_dict())
        ui.log(f"{side.name}: evaluating {side.checkpoint}")
        return session.evaluate(evaluated, with_predictions=True)

    bm, bp = measure(base_side)
    base_run = RunSide("base", str(base_side.checkpoint), bm, bp)
    arms = []
    for c in cands:
        m, p = measure(c)
        curve = read_jsonl(c.checkpoint.parent / "metrics.jsonl") if c.stored else []
        arms.append(RunSide(c.name, str(c.checkpoint), m, p, curve))
    prov = {"command": "compare", "recipe": recipe.name, "recipe_sha256": recipe.sha256,
            "base_sha256": base_side.sha256, "wall_s": round(time.perf_counter() - t0, 3)}
    try:
        return finish_report(recipe, out, base_run, arms, task_kinds(recipe), prov, gate, junit)
    except ValueError as e:  # stored predictions from runs on different test data
        raise UserError(f"cannot compare: {e} (were the runs made with another recipe or data? "
                        "pass checkpoints to evaluate them on this recipe)") from None
