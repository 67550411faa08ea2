"""Glue between runs and reports: run results → RunSide → gate → report.{json,md,html}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from goodfit_cli.errors import GateFailure
from goodfit_cli.gate import Gate, apply_gate, write_junit
from goodfit_cli.recipe import Recipe
from goodfit_cli.report import RunSide, build_report, write_report


def primary_for(recipe: Recipe) -> dict[str, str]:
    return {"old": recipe.old_task.metrics[0], "new": recipe.new_task.metrics[0]}


def finish_report(recipe: Recipe, out: Path, base: RunSide, arms: list[RunSide],
                  kinds: dict[str, str], provenance: dict[str, Any], gate: Gate | None = None,
                  junit: Path | None = None) -> dict[str, Any]:
    """Build, gate and write the report; return it (the caller decides on the exit code)."""
    report = build_report(base, arms, kinds=kinds, primary=primary_for(recipe),
                          provenance=provenance, readout=recipe.readout)
    results = apply_gate(gate, report) if gate is not None else {}
    write_report(report, out)
    if junit is not None and gate is not None:
        write_junit(junit, results)
    return report


def make_report(recipe: Recipe, out: Path, base: Path, base_metrics: dict,
                base_preds: dict[str, dict[str, torch.Tensor]], results: list,
                wise: dict[str, list[dict]], kinds: dict[str, str], provenance: dict[str, Any],
                gate: Gate | None = None, junit: Path | None = None) -> dict[str, Any]:
    """The report of a fine-tuning run, written next to its arms."""
    base_side = RunSide("base", str(base), base_metrics, base_preds)
    arms = [RunSide(r.name, str(r.dir / "model.safetensors"), r.metrics, r.predictions,
                    r.curve, wise.get(r.name), r.summary) for r in results]
    return finish_report(recipe, out, base_side, arms, kinds, provenance, gate, junit)


def raise_on_gate_failure(report: dict[str, Any]) -> None:
    failed = [a for a in report["arms"] if a.get("gate") and not a["gate"]["passed"]]
    if failed:
        lines = [f"{a['name']}: {'; '.join(a['gate']['violations'])}" for a in failed]
        raise GateFailure(" | ".join(lines))
