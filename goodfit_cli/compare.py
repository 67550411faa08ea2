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

from goodfit_cli import checkpoint as ckpt
from goodfit_cli import runner
from goodfit_cli.errors import UserError
from goodfit_cli.gate import Gate
from goodfit_cli.models import build_model, head_prefixes
from goodfit_cli.objectives import OBJECTIVES
from goodfit_cli.recipe import Recipe
from goodfit_cli.report import RunSide
from goodfit_cli.reporting import finish_report
from goodfit_cli.rundir import load_predictions, read_jsonl


@dataclass
class Side:
    name: str
    checkpoint: Path
    stored: Path | None = None  # a JSON file with "sha256" and "metrics", beside predictions


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
        return [Side(a, path / a.replace(":", "-") / "model.safetensors",
                     path / a.replace(":", "-") / "summary.json") for a in arms]
    if (path / "model.safetensors").exists():
        return _sides(path / "model.safetensors", as_base)
    raise UserError(f"{path}: not a checkpoint or a goodfit run directory "
                    "(no model.safetensors or run.json)")


def _reuse(side: Side) -> tuple[dict, dict] | None:
    """Stored (metrics, predictions) when they belong to exactly this checkpoint."""
    if side.stored is None or not side.stored.exists() or not side.checkpoint.exists():
        return None
    meta = json.loads(side.stored.read_text())
    preds = load_predictions(side.stored.parent / "predictions.safetensors")
    if meta.get("sha256") != ckpt.sha256_file(side.checkpoint) or not preds:
        return None
    return meta["metrics"], preds


def compare(recipe: Recipe, base: Path, candidates: list[Path], out: Path, *,
            gate: Gate | None = None, junit: Path | None = None, device: str | None = None,
            data_dir: str | None = None, log=print) -> dict[str, Any]:
    t0 = time.perf_counter()
    base_side = _sides(base, as_base=True)[0]
    cands = [s for c in candidates for s in _sides(c, as_base=False)]
    names = [c.name for c in cands]
    for i, c in enumerate(cands):  # distinct names for the report
        if names.count(c.name) > 1:
            c.name = f"{c.name}#{i + 1}"
    s = None  # the recipe's data and model, built only if something must be evaluated

    model = build_model(recipe.model.name, recipe.model.args, where=f"{recipe.source}: model")

    def measure(side: Side) -> tuple[dict, dict]:
        nonlocal s
        if side.checkpoint.exists():  # the recipe's architecture, whether or not we evaluate
            tensors, _ = ckpt.load_model(side.checkpoint)
            msgs = ckpt.load_into_model(model, tensors, side.checkpoint, head_prefixes(model))
            if msgs:
                raise UserError(f"{side.checkpoint}: does not fit the recipe's model ({msgs[0]}); "
                                "compare needs checkpoints of the recipe's architecture")
        stored = _reuse(side)
        if stored is not None:
            log(f"{side.name}: reusing stored metrics and predictions")
            return stored
        if not side.checkpoint.exists():
            raise UserError(f"checkpoint not found: {side.checkpoint}")
        if s is None:
            s = runner.setup(recipe, device=device, data_dir=data_dir)
        evaluated = s.model()
        runner.load_base(s, evaluated, side.checkpoint)
        log(f"{side.name}: evaluating {side.checkpoint}")
        return s.evaluate(evaluated, with_predictions=True)

    bm, bp = measure(base_side)
    base_run = RunSide("base", str(base_side.checkpoint), bm, bp)
    arms = []
    for c in cands:
        m, p = measure(c)
        curve = read_jsonl(c.checkpoint.parent / "metrics.jsonl") if c.stored else []
        arms.append(RunSide(c.name, str(c.checkpoint), m, p, curve))
    kinds = {t: OBJECTIVES.get(spec.loss).kind
             for t, spec in (("old", recipe.old_task), ("new", recipe.new_task))}
    prov = {"command": "compare", "recipe": recipe.name, "recipe_sha256": recipe.sha256,
            "base_sha256": ckpt.sha256_file(base_side.checkpoint)
            if base_side.checkpoint.exists() else None,
            "wall_s": round(time.perf_counter() - t0, 3)}
    try:
        return finish_report(recipe, out, base_run, arms, kinds, prov, gate, junit)
    except ValueError as e:  # stored predictions from runs on different test data
        raise UserError(f"cannot compare: {e} (were the runs made with another recipe or data? "
                        "pass checkpoints to evaluate them on this recipe)") from None

