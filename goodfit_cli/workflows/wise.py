"""`goodfit wise RUN/ARM --alpha A --out DIR`: a point of WiSE-FT's curve as a candidate.

WiSE-FT (Wortsman et al. 2022) interpolates the weights, (1 − α)·base + α·arm. The report of a
fine-tuning run draws that curve (`wise_curve`: the grid on validation, the chosen point on
test); this workflow turns one α into a checkpoint with provenance (the arm, α, both hashes),
evaluates it on both tasks and writes a report gated like an arm's.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from goodfit_cli import __version__
from goodfit_cli.core.distributed import is_main
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.memo import recall, remember
from goodfit_cli.data.inputs import recorded
from goodfit_cli.core.source import KEY, source_sha256
from goodfit_cli.core.timing import Phases
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file, write_json
from goodfit_cli.io.outputs import check_outputs
from goodfit_cli.io.runlock import Rerun, command_digest, held, open_run
from goodfit_cli.io.rundir import RunResult, moved_base, moved_data_dir, prepare_out, read_json
from goodfit_cli.io.rundir import save_predictions
from goodfit_cli.models import unwrap
from goodfit_cli.models.heads import own_head
from goodfit_cli.models.hf import pretrained_folder
from goodfit_cli.objectives import direction
from goodfit_cli.recipe import load_recipe
from goodfit_cli.report import RunSide
from goodfit_cli.report.gate import Gate
from goodfit_cli.report.margin import split_counts
from goodfit_cli.report.trials import best_on_validation
from goodfit_cli.report.verdict import point_measure, significance
from goodfit_cli.trainer.measured import (
    base_key,
    first_time,
    measure_base,
    measured_on,
    point_key,
)
from goodfit_cli.trainer.runcheck import check_run_source
from goodfit_cli.trainer.session import Place, Session, load_checkpoint, open_session
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.training import arm_dirname
from goodfit_cli.workflows.offset import choose as choose_offset
from goodfit_cli.workflows.offset import choose_with_alpha
from goodfit_cli.workflows.offset import line as offset_line
from goodfit_cli.workflows.fisher import base_fisher
from goodfit_cli.workflows.fisher import choose as choose_fisher
from goodfit_cli.workflows.fisher import line as fisher_line
from goodfit_cli.workflows.mixing import Mixing
from goodfit_cli.workflows.reporting import (base_head_record, carried, finish_report,
                                              provenance)


WRITES = frozenset({"model.safetensors", "predictions.safetensors", "summary.json", "report.json",
                    "val_predictions.safetensors", "report.md", "report.html", "timings.json"})


@dataclass
class WiseJob:
    """One `goodfit wise`: which arm of which run, which α, where to write."""

    arm_dir: Path  # RUN/<arm>, a finished arm of a fine-tuning run
    alpha: float
    out: Path
    overrides: list[str] | None = None  # applied to the run's recipe.yaml
    gate: Gate | None = None
    junit: Path | None = None
    overwrite: bool = False  # the user's: a non-empty --out is moved aside (OUT.prev-<time>)
    new_offset: bool = False  # also choose a new-class logit offset on validation (offset.py)
    margin: float = 0.0  # the offset's gate on validation, z standard errors inward
    only_if_new: bool = False  # nothing written (out removed, {} returned) when the point is
    # the arm itself: α = 1 and no offset (a search's trial then keeps the arm's folder)
    alphas: tuple[float, ...] | None = None  # with new_offset: α chosen together with τ among
    # these (offset.choose_with_alpha), `alpha` the one chosen alone, a candidate when it passed
    alpha_passed: bool = True
    fisher: bool = False  # also the points weighted by the old task's Fisher (fisher.py), α
    # chosen with β; not with `alphas`
    in_place: bool = False  # search and rejudge: their own folder, no lock, nothing moved aside
    # (with `overwrite`, its files are replaced)


def check_arm_dir(arm_dir: Path) -> None:
    """`arm_dir` is RUN/<arm>, a finished arm: one line naming it otherwise (a run folder given
    for its arm: before, `recipe not found: recipe.yaml`, read beside the run)."""
    if not (arm_dir.parent / "run.json").exists() or not (arm_dir / "summary.json").exists():
        arms = sorted(str(d) for d in arm_dir.iterdir() if (d / "summary.json").is_file()) \
            if (arm_dir / "run.json").exists() else []  # a run folder given: its arms, named
        hint = f"; give one of its arms: {', '.join(arms)}" if arms else (
            "; give one of its arms, RUN/<arm>" if (arm_dir / "run.json").exists() else "")
        gone = read_json(arm_dir.parent / "run.json").get("diverged") \
            if (arm_dir.parent / "run.json").is_file() else None
        arm = next((a for a in gone or {} if arm_dirname(a) == arm_dir.name), None) \
            if isinstance(gone, dict) else None
        if arm is not None:  # no checkpoint: its training failed
            hint = f"; arm {arm!r} diverged ({gone[arm]})"
        raise UserError(f"{arm_dir}: not a finished arm of a goodfit fine-tuning run "
                        f"(expected RUN/<arm>/summary.json and RUN/run.json){hint}")


def wise(job: WiseJob, place: Place | None = None, ui: Ui | None = None) -> dict[str, Any]:
    """Write DIR/model.safetensors (the α-mix, and the new-class offset when asked), its
    predictions, summary and gated report. Rank 0 only (under torchrun the other ranks return
    {} at once); {} too, nothing written, for `only_if_new` when the point is the arm itself."""
    ui = ui or Ui()
    if not is_main():
        return {}
    t0 = time.perf_counter()
    phases = Phases()  # where the command's time goes (OUT/timings.json, the report)
    arm_dir, run = job.arm_dir, job.arm_dir.parent
    if job.fisher and job.alphas:
        raise UserError("a Fisher-weighted point and α chosen together with the offset are one "
                        "or the other (--no-fisher, or --offset-after-alpha)")
    if not 0.0 <= job.alpha <= 1.0:
        raise UserError(f"--alpha {job.alpha}: must be between 0 (the base) and 1 (the arm)")
    check_arm_dir(arm_dir)
    recipe = load_recipe(run / "recipe.yaml", job.overrides or [])
    saved = read_json(run / "run.json")
    if not job.overrides:  # RUN/recipe.yaml as the run ran it; its data: in _point
        check_run_source(run, saved, recipe)
    place = place or Place()
    moved = None if place.data_dir or not saved.get("data_dir") else str(  # with the run
        moved_data_dir(run, saved, ui.log))
    place = Place(place.device, saved["seed"] if place.seed is None else place.seed,
                  place.data_dir or moved)
    base = moved_base(run, saved, "base", (saved.get("identity") or {}).get("base_sha256"), ui.log)
    if not base.exists():  # before: "checkpoint not found: PATH", no word of where it came from
        raise UserError(f"{run / 'run.json'}: its base {base} is not found (moved or removed "
                        "since the run; a relative path is taken relative to the run folder); "
                        "wise mixes the arm with that base: put it back there")
    # the base too: `--out BASEDIR --overwrite` wrote the point over the base's checkpoint
    check_outputs({"--junit": job.junit}, {"--out": job.out},
                  {"RUN/ARM": arm_dir, "base (RUN/run.json)": base})
    if job.in_place:  # a search's or rejudge's own folder, written as it is
        made = [p for p in (job.out, *job.out.absolute().parents) if not p.exists()]
        prepare_out(job.out, overwrite=job.overwrite, resume=False, resume_hint="")
        try:
            return _point(job, (recipe, saved, place, base, t0, phases, moved), ui)
        except BaseException:  # a refusal (the run's data changed): the folders made, gone
            with contextlib.suppress(OSError):
                for folder in made:  # innermost first; one holding anything stays
                    folder.rmdir()
            raise
    # the user's --out: locked, and --overwrite moves its old content aside (kept), as compare
    # and finetune do (before: the files were replaced in place, the old point lost)
    again = Rerun(command_digest("wise", arm_dir.resolve(), job.alpha, job.overrides,
                                 job.gate, job.junit and job.junit.resolve(), job.new_offset,
                                 job.margin, place, *(["fisher"] if job.fisher else [])),
                  WRITES)  # killed: the same runs again
    lock, moved = open_run(job.out, overwrite=job.overwrite, resume=False, resume_hint="",
                           rerun=again)
    if moved is not None:
        ui.log(f"--overwrite: the previous content of {job.out} was moved to {moved} (kept)")
    with held(lock):
        return _point(job, (recipe, saved, place, base, t0, phases, moved), ui)


def _point(job: WiseJob, opened: tuple, ui: Ui) -> dict[str, Any]:
    """The rest of `wise` once its --out is ready: `opened` = (recipe, run.json, place, base,
    the start time, the phases, the data folder found moved with the run or None)."""
    recipe, saved, place, base, t0, phases, moved = opened
    arm_dir, run = job.arm_dir, job.arm_dir.parent
    s = open_session(recipe, place, join=False)
    if not job.overrides or moved not in (None, saved.get("data_dir")):  # or moved with it
        check_run_source(run, saved, recipe, s)  # the data the run read (hashed once)
    model = s.model()
    # as the run's fine-tune loaded it: its key map, and a head grown for new classes keeps
    # the base's rows (the new rows at the model's own initial values, the run's seed)
    loaded = load_checkpoint(model, base, recipe.key_map, where=recipe.at("checkpoint.key_map"),
                             grow_rows=s.kinds["new"] == "classification")
    want = (saved.get("identity") or {}).get("base_sha256")
    if want and want != loaded.sha256:
        raise UserError(f"{run / 'run.json'}: names {base} as the base, whose sha256 is "
                        f"{loaded.sha256[:12]}…, but the run recorded base {str(want)[:12]}…; "
                        "the run folder was changed or the base was replaced")
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # test (the report's) and validation (the verdict's); in a search, measured by its finetune
    phases.add("load", time.perf_counter() - phases.start)
    with phases.phase("base_evaluation"), own_head(model, loaded.head_changes) as base_head:
        key = base_key(s, model, loaded, base_head, recipe.key_map)  # the fine-tune's key
        base_measured = measure_base(s, model, key)
    head_record = base_head_record(loaded.head_changes, base_head)
    t_point = time.perf_counter()
    arm_ckpt = arm_dir / "model.safetensors"
    arm_tensors, arm_meta = ckpt.load_model(arm_ckpt)
    ckpt.check_finite(arm_tensors, arm_ckpt)
    arm_sha256 = sha256_file(arm_ckpt)  # a search's trial: its fine-tune measured this point
    recorded_sha = read_json(arm_dir / "summary.json").get("sha256")
    if recorded_sha not in (None, arm_sha256):  # the arm's curve and numbers were another's
        raise UserError(f"{arm_ckpt}: does not match the file whose sha256 "
                        f"{arm_dir / 'summary.json'} records; the run folder was changed after "
                        "the run")
    missing = [k for k in base_state if k not in arm_tensors]
    if missing:
        raise UserError(f"{arm_ckpt}: has no tensor {missing[0]!r} of the recipe's model")
    for k, b in base_state.items():  # before: a RuntimeError from the mix, exit 1
        t = arm_tensors[k]
        if tuple(t.shape) != tuple(b.shape):
            raise UserError(f"{arm_ckpt}: tensor {k!r} has shape {tuple(t.shape)} "
                            f"in the arm's checkpoint but {tuple(b.shape)} in the recipe's model")
        if t.is_floating_point() != b.is_floating_point():  # as loading refuses it
            raise UserError(f"{arm_ckpt}: tensor {k!r} is {str(t.dtype)[6:]} in the arm's "
                            f"checkpoint but {str(b.dtype)[6:]} in the recipe's model")
    fisher = base_fisher(s, model) if job.fisher else {}  # at the base's weights
    mixing = Mixing(model, base_state, arm_tensors,  # into the model: no mixed copy of it
                    fisher if isinstance(fisher, dict) else None)
    mixing.set(job.alpha)
    del base_state, arm_tensors  # held by `mixing` alone: freed with it unless α is chosen again
    alpha = job.alpha  # or the one chosen with a Fisher weighting, or with the offset
    offset: dict[str, Any] = {}  # the records under "fisher" and "new_offset" in header,
    # summary and provenance
    if fisher:  # its record under "fisher"; a phrase: why there is no such point
        at0 = recall(point_key(key, arm_sha256, job.alpha))  # the fine-tune's measurement of α
        weighted = choose_fisher(s, model, mixing, recipe.wise_alphas,
                                 (job.alpha, job.alpha_passed), base_measured[2], job.gate,
                                 job.margin, base_measured[3], at0 and at0[2:]) \
            if isinstance(fisher, dict) else fisher
        if isinstance(weighted, dict) or first_time(fisher_line(weighted)):
            ui.log(fisher_line(weighted))
        if isinstance(weighted, dict):
            alpha, offset = weighted["alpha"], {"fisher": weighted}
    beta = offset["fisher"]["beta"] if offset else 0.0
    if not (job.new_offset and job.alphas):
        mixing = None
    if job.new_offset:
        if job.alphas:
            chosen = choose_with_alpha(s, model, lambda: mixing,  # never with `fisher`
                                       job.alphas, (job.alpha, job.alpha_passed),
                                       base_measured[2], job.gate, job.margin, base_measured[3])
            alpha = chosen["alpha"]
        else:
            chosen = choose_offset(s, model, base_measured[2], job.gate, job.margin,
                                   base_measured[3])
        said = offset_line(chosen, s.recipe.primary, s.recipe.units)
        if "classes" in chosen or first_time(said):  # why it cannot apply: once per search
            ui.log(said)
        offset["new_offset"] = chosen
    ui.log(f"evaluating (1 - {alpha:g}) * base + {alpha:g} * {arm_meta.get('arm')}"
           + (f", weighted by the old task's Fisher (β {beta:g})" if beta else ""))
    point = point_key(key, arm_sha256, alpha)
    name = f"{arm_meta.get('arm', arm_dir.name)}@wise{alpha:g}"
    tau = offset["new_offset"]["tau"] if "new_offset" in offset else 0.0
    if beta:  # another point than the mix: measured as written
        point, name = None, f"{name}+fisher{beta:g}"
    if tau:
        point, name = None, f"{name}+new{tau:+g}"
    if job.only_if_new and alpha == 1.0 and not tau and not beta:
        if not any(job.out.iterdir()):  # made above, nothing written into it
            job.out.rmdir()
        return {}
    metrics, preds, val, val_preds = measure_base(s, model, point)
    phases.add("evaluations", time.perf_counter() - t_point)  # the mix, offset and point
    # the recipe the arm was trained from, as its run recorded it (RUN/recipe.yaml, read here,
    # has the run's data_dir and arms written in); with overrides, the recipe that ran here
    ran = arm_meta.get("recipe_sha256") if not job.overrides else None
    ran = ran if isinstance(ran, str) and ran else recipe.sha256
    meta = {"goodfit_version": __version__, KEY: source_sha256(), "recipe": recipe.name,
            "recipe_sha256": ran, "base_sha256": loaded.sha256, "stage": "wise",
            "arm": arm_meta.get("arm", arm_dir.name), "wise_alpha": alpha,
            "wise_of": str(arm_ckpt.resolve()), "wise_of_sha256": arm_sha256,
            "metrics": metrics, **offset, **carried(s, loaded)}
    if recorded(model) is not None:
        meta["input"] = recorded(model)
    out = job.out
    ckpt.save_model(out / "model.safetensors", model.state_dict(), meta)
    save_predictions(out / "predictions.safetensors", preds)
    save_predictions(out / "val_predictions.safetensors", val_preds, "validation")
    summary = {"name": name, "kind": "wise", "alpha": alpha, "arm": meta["arm"],
               "wise_of": meta["wise_of"], "metrics": metrics, "val_metrics": val,
               "measured_on": measured_on(s, model), "seed": s.seed, **offset,
               "checkpoint": str((out / "model.safetensors").resolve()),
               "sha256": sha256_file(out / "model.safetensors"),
               "files_sha256": {f: sha256_file(out / f)  # what compare may reuse, checked
                                for f in ("predictions.safetensors",
                                          "val_predictions.safetensors")},
               **pretrained_folder(unwrap(model), out)}  # a transformers model: out/hf too
    write_json(out / "summary.json", summary)
    prov = provenance(recipe, s, loaded.sha256) | {
        "command": "wise", "recipe_sha256": ran, "wise_alpha": alpha, "wise_of": meta["wise_of"],
        **({"base_head": head_record} if head_record else {}),
        "wall_s": round(time.perf_counter() - t0, 3), "validation": s.validation, **offset,
        "input": recorded(model) or {"source": "as stored"},  # fed as the base was trained
        "timings": phases.record()}  # the report's own time: OUT/timings.json
    bm, bp, bv, bvp = base_measured
    with phases.phase("report"), phases.counting():  # the bootstrap: a phase of its own
        report = finish_report(
            recipe, out, RunSide("base", str(base), bm, bp, val_metrics=bv, val_predictions=bvp),
            [RunSide(name, summary["checkpoint"], metrics, preds, [], None, summary, val,
                     val_preds)], s.kinds, prov, job.gate, job.junit, s.sample_ids,
            job.margin)  # the verdict reads the gate as the search judges it
    now = phases.record()
    write_json(out / "timings.json", now)
    ui.log(phases.line(now))
    return report


@torch.no_grad()
def wise_curve(s: Session, model: nn.Module, base_state: dict, arm: RunResult,
               at_base: tuple[dict, dict] | None, base_val: dict, gate: Gate | None,
               alphas: tuple[float, ...], kept_as: str | None = None,
               zero: dict | None = None, z: float = 0.0,
               base_preds: tuple[dict, dict] | None = None) -> list[dict]:
    """WiSE-FT: (1−α)·base + α·arm for each α (no training; the recipe's `wise_alphas`: 0,
    report.wise_grid, 1). The grid is the choice of α, so
    it is evaluated on the validation splits ("val") only; the test splits (the report's) are
    measured for the arm's chosen point alone (`best_on_validation`: the best new-task point
    that gains over the base and passes `gate` on validation; marked "chosen"), besides α = 1,
    the arm (its own measurement), and α = 0, the base (`at_base`, its (test, val) metrics,
    when its weights are exactly the base's; evaluated on validation otherwise), and the points
    `arm.val_curve` holds (measured during a search trial's training), read not measured. Each α is
    mixed into the model's own tensors in place. `kept_as`: the base's key (trainer/measured.py)
    under which the chosen point's measurement, and the arm's own (α = 1), are kept for the
    command (`goodfit wise` of that point in a search's trial measures nothing again). `zero`:
    a dict the command's arms share, holding α = 0's validation measurement once one arm made
    it (the base's weights with the head as loaded, the same model for every arm). `z`: the
    validation margin the gate is read with (a search's trial: its --val-margin). `base_preds`:
    the base's (test, validation) predictions, against which each point's flips are counted
    ("val_flips" on validation, "flips" on test for the chosen point), so a flip-rate limit
    judges a point as it judges an arm; and, when the gate asks for significance, each change's
    paired bootstrap CI ("val_ci", "ci"), so require_significant reads a point as an arm."""
    mixing = Mixing(model, base_state, ckpt.load_model(arm.dir / "model.safetensors")[0])
    arm_val = arm.summary.get("val_metrics")
    curve, val_preds, boot = [], {}, significance(gate)
    for a in alphas:
        if a == 0 and at_base is not None:
            test, val = (copy.deepcopy(m) for m in at_base)
            curve.append({"alpha": a, **test, "val": val})
        elif a == 0 and zero is not None and "val" in zero:  # another arm measured it
            curve.append({"alpha": a, "val": copy.deepcopy(zero["val"])})
            val_preds[a] = zero["preds"]
        elif a == 1 and arm_val is not None:
            curve.append({"alpha": a, **copy.deepcopy(arm.metrics), "val": copy.deepcopy(arm_val)})
        elif round(a, 6) in (arm.val_curve or {}):  # measured during the training (a rung watch)
            val, val_preds[a] = arm.val_curve[round(a, 6)]
            curve.append({"alpha": a, "val": copy.deepcopy(val)})
        else:
            mixing.set(a)
            val, val_preds[a] = s.evaluate(model, True, split="val")
            curve.append({"alpha": a, "val": val})
            if a == 0 and zero is not None:
                zero.update(val=copy.deepcopy(val), preds=val_preds[a])
        if a in val_preds and base_preds is not None:  # with CIs where the gate asks them
            curve[-1]["val_flips"], ci = point_measure(base_preds[1], val_preds[a], s.kinds, boot)
            curve[-1].update({"val_ci": ci} if ci else {})
    counts = split_counts(s.validation)
    chosen = best_on_validation(gate, curve, base_val,
                                (s.recipe.primary["old"], s.recipe.primary["new"]),
                                (direction(s.recipe.primary["old"]),
                                 direction(s.recipe.primary["new"])), z=z, n=counts or None)
    if arm_val is not None and arm.val_predictions is not None:  # α = 1: the arm as measured
        remember(point_key(kept_as, arm.summary.get("sha256"), 1.0),
                 (copy.deepcopy(arm.metrics), arm.predictions, copy.deepcopy(arm_val),
                  arm.val_predictions))
    if chosen is not None:
        point = next(p for p in curve if p["alpha"] == chosen)
        mixing.set(chosen)
        test, preds = s.evaluate(model, True)  # its test numbers, for the report
        remember(point_key(kept_as, arm.summary.get("sha256"), chosen),
                 (copy.deepcopy(test), preds, copy.deepcopy(point["val"]), val_preds[chosen]))
        point.update(test, chosen=True)
        if base_preds is not None:
            point["flips"], ci = point_measure(base_preds[0], preds, s.kinds, boot)
            point.update({"ci": ci} if ci else {})
    model.load_state_dict(base_state)
    return curve
