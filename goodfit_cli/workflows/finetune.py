"""`goodfit finetune`: fine-tune the base on the NEW task with each arm, then report and gate.

The run folder (see goodfit_cli.io.rundir) holds the recipe as run, run.json, the base's
metrics and predictions, one folder per arm and the report. `--resume RUN` continues an
interrupted run from its own run.json and recipe.yaml (`resume_job`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from goodfit_cli import __version__
from goodfit_cli.core.distributed import finish, is_main, stop_on_signals
from goodfit_cli.core.errors import Interrupted, UserError
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import atomic_write, write_json
from goodfit_cli.io.rundir import RunResult, load_result, prepare_out, save_predictions
from goodfit_cli.recipe import Recipe, load_recipe
from goodfit_cli.report.gate import Gate
from goodfit_cli.training import parse_arm
from goodfit_cli.training.early_stop import stop_rule
from goodfit_cli.workflows.reporting import make_report, provenance
from goodfit_cli.workflows.session import Place, Session, load_checkpoint, open_session
from goodfit_cli.workflows.stage import StageJob, Ui, quiet, run_stage


@dataclass
class FinetuneJob:
    """One `goodfit finetune`: what to fine-tune from where, and what to write."""

    recipe: Recipe
    base: Path
    out: Path
    arms: list[str] | None = None  # default: the recipe's finetune.arms
    resume: bool = False  # continue the run in `out`
    overwrite: bool = False  # write into a non-empty `out`
    wise: bool = True  # the WiSE-FT interpolation curve of each arm
    gate: Gate | None = None
    junit: Path | None = None


def resume_job(run: Path, overrides: list[str] | None, place: Place, *,
               arms: list[str] | None = None, base: Path | None = None) -> tuple[FinetuneJob, Place]:
    """The job and place that continue the run in `run`, from its run.json and recipe.yaml."""
    meta = run / "run.json"
    if not meta.exists():
        raise UserError(f"--resume {run}: no run.json there; not a goodfit run directory")
    try:
        saved = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{meta}: cannot read the run's record ({e}); the run folder is damaged, "
                        "start a new run with --out") from None
    recipe = load_recipe(run / "recipe.yaml", overrides or [])
    place = Place(place.device, saved["seed"] if place.seed is None else place.seed,
                  place.data_dir or saved.get("data_dir"))
    job = FinetuneJob(recipe, base or Path(saved["base"]), run, arms or saved["arms"],
                      resume=True)
    return job, place


def finetune(job: FinetuneJob, place: Place | None = None, ui: Ui | None = None) -> dict[str, Any]:
    """Fine-tune every arm from the base on the new task; write checkpoints and the report.

    Returns the report (an empty dict on ranks other than 0)."""
    ui = ui or Ui()
    recipe, out = job.recipe, job.out
    rule = stop_rule(recipe.finetune.early_stop, recipe.primary["new"], job.gate,
                     recipe.at("finetune.early_stop"))
    main_rank = is_main()
    if main_rank:
        prepare_out(out, overwrite=job.overwrite, resume=job.resume)
    else:
        ui = Ui(quiet)  # only rank 0 speaks
    s = open_session(recipe, place)
    arm_names = job.arms or recipe.finetune.arms
    parsed = [parse_arm(a, recipe.finetune) for a in arm_names]
    model = s.model()
    loaded = load_checkpoint(model, job.base)
    for msg in loaded.messages:
        ui.log(msg)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base_metrics, base_preds = s.evaluate(model, with_predictions=True)
    if main_rank:
        # recipe.yaml first: a run.json (what --resume looks for) always has its recipe beside
        # it, even after a crash between the two. The recipe's own data_dir is resolved against
        # its file, and --resume reads the copy in `out`: record the resolved one.
        atomic_write(out / "recipe.yaml", recipe.to_yaml())
        write_json(out / "run.json", {"base": str(job.base), "arms": arm_names, "seed": s.seed,
                                       "device": str(s.device),
                                       "data_dir": (place or Place()).data_dir or recipe.data_dir})
        (out / "base").mkdir(exist_ok=True)
        write_json(out / "base" / "metrics.json", {"checkpoint": str(job.base),
                                                    "sha256": loaded.sha256,
                                                    "metrics": base_metrics})
        save_predictions(out / "base" / "predictions.safetensors", base_preds)
    ui.log("base: " + "  ".join(f"{t} " + ", ".join(f"{m} {v:.4g}" for m, v in d.items())
                                for t, d in base_metrics.items()))
    meta = {"goodfit_version": __version__, "recipe": recipe.name, "recipe_sha256": recipe.sha256,
            "base_sha256": loaded.sha256, "stage": "finetune"}
    if rule is not None:  # the gate's limits are watched against the base
        rule = replace(rule, base=base_metrics, base_old=base_preds["old"])
    results: list[RunResult] = []
    t_start = time.perf_counter()
    with stop_on_signals() as stop:
        for arm in parsed:
            arm_dir = out / arm.dirname
            ema_dir = out / f"{arm.dirname}+ema"  # training.arm_dirname of '<arm>+ema'
            if (arm_dir / "summary.json").exists() and (arm_dir / "model.safetensors").exists():
                results.append(load_result(arm_dir))
                if (ema_dir / "summary.json").exists():
                    results.append(load_result(ema_dir))
                ui.log(f"{arm.name}: already finished, reusing {arm_dir}")
                continue
            model.load_state_dict(base_state)
            for p in model.parameters():
                p.requires_grad_(True)
            torch.manual_seed(s.seed)
            try:
                results.append(run_stage(s, model, StageJob(arm, recipe.finetune, "new", arm_dir,
                                                            meta, stop_rule=rule), stop, ui))
                if (ema_dir / "summary.json").exists():
                    results.append(load_result(ema_dir))
            except Interrupted as e:
                e.resume = f"the same command plus --resume {out}"
                raise
    if not main_rank:
        finish()  # waits for rank 0's report, then leaves the group
        return {}
    model.load_state_dict(base_state)
    wise_curves = ({r.name: wise_curve(s, model, base_state, r.dir) for r in results}
                   if job.wise else {})
    model.load_state_dict(base_state)
    prov = provenance(recipe, s, loaded.sha256) | {"wall_s": round(time.perf_counter() - t_start, 3)}
    try:
        return make_report(recipe, out, job.base, (base_metrics, base_preds), results,
                           wise_curves, s.kinds, prov, gate=job.gate, junit=job.junit)
    finally:
        finish()


@torch.no_grad()
def wise_curve(s: Session, model: nn.Module, base_state: dict, arm_dir: Path,
               alphas: tuple[float, ...] = tuple(i / 10 for i in range(11))) -> list[dict]:
    """WiSE-FT: evaluate (1−α)·base + α·arm for each α on both tasks (no training)."""
    arm_tensors, _ = ckpt.load_model(arm_dir / "model.safetensors")
    curve = []
    for a in alphas:
        mixed = {}
        for k, b in base_state.items():
            t = arm_tensors[k].to(b.device)
            mixed[k] = (b + a * (t.to(b.dtype) - b)) if b.is_floating_point() else (t if a >= 0.5 else b)
        model.load_state_dict(mixed)
        curve.append({"alpha": a, **s.evaluate(model)})
    return curve
