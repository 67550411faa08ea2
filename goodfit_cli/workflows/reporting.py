"""Glue between runs and reports: run results -> RunSide -> gate -> report.{json,md,html} (+ JUnit)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from goodfit_cli import __version__
from goodfit_cli.core.errors import GateFailure, UserError
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.io.checkpoint import read_metadata
from goodfit_cli.io.rundir import RunResult
from goodfit_cli.recipe import Recipe
from goodfit_cli.report import RunSide, build_report, write_report
from goodfit_cli.report.build import jsonable
from goodfit_cli.report.gate import (
    Gate,
    apply_gate,
    check_metrics,
    describe,
    load_gate,
    parse_gate,
    report_units,
)
from goodfit_cli.report.gate_flags import gate_from_flags
from goodfit_cli.report.verdict import shipped_checks, verdict
from goodfit_cli.report.junit import write_junit
from goodfit_cli.trainer.session import Loaded, Session, task_kinds

Predictions = dict[str, dict[str, torch.Tensor]]


def provenance(recipe: Recipe, s: Session, base_sha: str | None = None) -> dict[str, Any]:
    """What ran: code and library versions, recipe and its hash, base hash, seeds, device.
    The recipe's file is recorded absolute: as given (`--recipe r.yaml`, `--resume RUN`'s
    RUN/recipe.yaml) it would depend on the directory the command ran in."""
    where = Path(recipe.source)
    source = str(where.resolve()) if where.is_file() else recipe.source
    return {"goodfit": __version__, KEY: source_sha256(), "torch": torch.__version__,
            "python": platform.python_version(),
            "recipe": recipe.name, "recipe_source": source, "recipe_sha256": recipe.sha256,
            "base_sha256": base_sha, "seed": s.seed, "data_seed": recipe.seed,
            "device": str(s.device), "precision": recipe.precision,
            **class_names(s)}


def losses(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Each task's training loss and its args as trained (a cross_entropy's class balance
    among them), for run.json and the report."""
    return {t: {"loss": spec.loss, "args": dict(spec.args or {})}
            for t, spec in (("old", recipe.old_task), ("new", recipe.new_task))}


def lineage(checkpoint: Path) -> list[str]:
    """The sha256 of the models a goodfit checkpoint was fine-tuned from, nearest first (v2:
    [v1, v0]): its `lineage` metadata, else as far as its `base_sha256` goes; [] for another
    file or a folder."""
    meta = read_metadata(checkpoint) if Path(checkpoint).is_file() else {}
    before = meta.get("lineage")
    if isinstance(before, list) and all(isinstance(h, str) for h in before):
        return before
    return [meta["base_sha256"]] if isinstance(meta.get("base_sha256"), str) else []


def carried(s: Session, base: Loaded) -> dict[str, Any]:
    """What a fine-tune's checkpoint carries forward to the next update from its `base`: its
    `class_names` (the next fine-tune numbers them alike) and its `lineage`."""
    return {**class_names(s), "lineage": [base.sha256, *lineage(base.path)]}


def class_names(s: Session) -> dict[str, list[str]]:
    """{"class_names": [a name per global class id]} when the data names its classes (an
    image folder's folders, a table's label names), for the report's per-class tables; {}
    otherwise."""
    names = getattr(s.tasks.get("new"), "label_names", None) or getattr(
        s.tasks.get("old"), "label_names", None)
    return {"class_names": list(names)} if names else {}


_MEASURED_WITH = {
    "exact": "its own head (the new rows masked out)",
    "rows_dropped": "the rows of its head the new task keeps",
    "new_rows_unmasked": "its old rows plus the new rows (a head without bias cannot mask them)",
    "reinitialised": "a RE-INITIALISED head: the base's metrics are not its own",
}


def base_head_record(changes: list[dict], measured: str) -> dict[str, Any] | None:
    """What happened to the base's head when it was loaded, for run.json and the report."""
    if not changes:
        return None
    return {"changes": changes, "measured": measured, "measured_with": _MEASURED_WITH[measured]}


def finish_report(recipe: Recipe, out: Path, base: RunSide, arms: list[RunSide],
                  kinds: dict[str, str], provenance: dict[str, Any], gate: Gate | None = None,
                  junit: Path | None = None,
                  sample_ids: dict[str, list[str] | None] | None = None,
                  margin: float = 0.0) -> dict[str, Any]:
    """Build, gate and write the report; return it (the caller decides on the exit code).
    `margin`: the validation margin the verdict reads the gate with (a search's trial)."""
    report = build_report(base, arms, kinds=kinds, primary=recipe.primary,
                          provenance=provenance, readout=recipe.readout,
                          sample_ids=sample_ids, losses={"old": recipe.old_task.loss,
                                                         "new": recipe.new_task.loss})
    report["gate_limits"] = describe(gate)  # stated at the top of every report
    results = apply_gate(gate, report) if gate is not None else {}
    chosen = verdict(report, gate, margin, report_units(report))  # chosen on validation,
    if chosen is not None:  # confirmed on test
        report["verdict"] = jsonable(chosen)
    if provenance.get("command") not in ("compare", "wise"):  # finetune: what ships, gated
        results.update(shipped_checks(report.get("verdict"), gate is not None))
    write_report(report, out)
    if junit is not None and gate is not None:
        write_junit(junit, results)
    return report


def make_report(recipe: Recipe, out: Path, base: Path,
                measured: tuple[dict, Predictions, dict, Predictions],
                results: list[RunResult], wise: dict[str, list[dict]], kinds: dict[str, str],
                provenance: dict[str, Any], gate: Gate | None = None,
                junit: Path | None = None,
                sample_ids: dict[str, list[str] | None] | None = None,
                margin: float = 0.0) -> dict[str, Any]:
    """The report of a fine-tuning run, written next to its arms. `measured`: the base's
    (test metrics, test predictions, val metrics, val predictions)."""
    metrics, preds, val, val_preds = measured
    base_side = RunSide("base", str(base), metrics, preds, val_metrics=val,
                        val_predictions=val_preds)
    # absolute, as each arm's summary.json records it: a relative --out depends on the cwd
    arms = [RunSide(r.name, str(r.dir.resolve() / "model.safetensors"), r.metrics, r.predictions,
                    r.curve, wise.get(r.name), r.summary, r.summary.get("val_metrics"),
                    r.val_predictions) for r in results]
    return finish_report(recipe, out, base_side, arms, kinds, provenance, gate, junit,
                         sample_ids, margin)


def raise_on_gate_failure(report: dict[str, Any], shipped: bool = False) -> None:
    """GateFailure (exit 3) naming every arm that breaks a limit on test and, with `shipped`
    (`goodfit finetune`), the verdict's choice: a WiSE-FT point it ships that breaks one, or
    no choice at all (keep the base) under a gate (report/verdict.py `shipped_checks`)."""
    failed = [(a["name"], a["gate"]) for a in report["arms"]
              if a.get("gate") and not a["gate"]["passed"]]
    if shipped:
        gated = any(a.get("gate") for a in report["arms"])
        failed += [(n, r) for n, r in shipped_checks(report.get("verdict"), gated).items()
                   if not r["passed"]]
    if failed:
        lines = [f"{name}: {'; '.join(r['violations'])}" for name, r in failed]
        raise GateFailure(" | ".join(lines))


def gate_for(recipe: Recipe, gate_file: Path | None, max_old_drop: float | None,
             max_nfr: float | None, bounds: dict[str, list[str] | None] | None = None,
             recorded: Gate | None = None, junit: Path | None = None) -> Gate | None:
    """The gate a command asked for: a gate file, or limits from flags (--max-old-drop,
    --max-nfr and the absolute `bounds` {"min_old": ["accuracy=0.9"], ...}), or else the gate
    a resumed run `recorded` (the one its first command ran with), or else the recipe's `gate`
    section, or none. A limit on a metric the recipe's tasks do not measure is a UserError
    here, before anything runs; so is a `junit` file asked for with no gate (a CI job would
    pass on a gate no one set). So is a report.readout naming a metric it does not measure."""
    check_readout(recipe)
    flagged = max_old_drop is not None or max_nfr is not None or any((bounds or {}).values())
    if gate_file is None and not flagged and recorded is not None:
        gate = recorded
    elif gate_file is not None:
        if flagged:
            raise UserError("give either --gate or the gate flags (--max-old-drop, --max-nfr, "
                            "--min-old, --max-old, --min-new, --max-new, --max-old-drop-rel), "
                            "not both")
        gate = load_gate(gate_file)
    elif not flagged and recipe.gate is not None:  # the recipe's own gate, when none is given
        given = "an override of its gate" if ("gate",) in getattr(recipe, "_marks", ((), ()))[1] \
            else "its gate section"
        gate = parse_gate(recipe.gate, f"{recipe.source} ({given})",
                          f"{recipe.at('gate')}.", lambda i: recipe.locate(("gate", "limits", i)))
    elif not flagged:
        if junit is not None:
            raise UserError(f"--junit {junit}: there is no gate to write (give --gate, "
                            "--max-old-drop, --max-nfr, --min-old, ... or a gate section in the "
                            "recipe)")
        return None
    else:
        if max_nfr is not None and task_kinds(recipe)["old"] != "classification":
            raise UserError(f"--max-nfr needs a classification old task; {recipe.source} has "
                            f"old_task.loss {recipe.old_task.loss!r}")
        gate = gate_from_flags(max_old_drop, max_nfr, recipe.primary["old"], bounds)
    kinds = task_kinds(recipe)
    check_metrics(gate, {t: measured_metrics(recipe, t, kinds[t]) for t in kinds}, kinds,
                  f"recipe {recipe.source}")
    return gate


def check_readout(recipe: Recipe) -> None:
    """A UserError (exit 2) when report.readout names a metric its task does not measure
    (before: accepted, and the report's read-out table had no values)."""
    spec, kinds = recipe.readout, task_kinds(recipe)
    for task, key in (("new", "metric_new"), ("old", "metric_old")):
        if spec is not None and spec[key] not in (have := measured_metrics(recipe, task,
                                                                          kinds[task])):
            raise UserError(f"{recipe.locate(('report', 'readout', key))}: the {task} task "
                            f"does not measure {spec[key]!r} (it measures: "
                            f"{', '.join(sorted(have))})")


def measured_metrics(recipe: Recipe, task: str, kind: str) -> set[str]:
    """The metrics a run of `recipe` reports for `task`: the listed ones, and accuracy (a
    classification task) or mse (a regression task), which the report derives from predictions."""
    spec = recipe.old_task if task == "old" else recipe.new_task
    return {*spec.metrics, "accuracy" if kind == "classification" else "mse"}
