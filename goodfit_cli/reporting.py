"""Glue between runs and reports: run results → RunSide → report.{json,md,html} in the run dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from goodfit_cli.recipe import Recipe
from goodfit_cli.report import RunSide, build_report, write_report


def primary_for(recipe: Recipe) -> dict[str, str]:
    return {"old": recipe.old_task.metrics[0], "new": recipe.new_task.metrics[0]}


def make_report(recipe: Recipe, out: Path, base: Path, base_metrics: dict,
                base_preds: dict[str, dict[str, torch.Tensor]], results: list,
                wise: dict[str, list[dict]], kinds: dict[str, str], provenance: dict[str, Any],
                gate_results: dict[str, dict] | None = None) -> dict[str, Any]:
    """Build the report of a fine-tuning run and write it next to the arms."""
    base_side = RunSide("base", str(base), base_metrics, base_preds)
    arms = [RunSide(r.name, str(r.dir / "model.safetensors"), r.metrics, r.predictions,
                    r.curve, wise.get(r.name), r.summary) for r in results]
    report = build_report(base_side, arms, kinds=kinds, primary=primary_for(recipe),
                          provenance=provenance, readout=recipe.readout,
                          gate_results=gate_results)
    write_report(report, out)
    return report
