"""The report of a `goodfit search` study, built from what the study stores: every trial judged
with this command's gate (workflows/search.py's docstring), the recipe's default arms as the
reference points and their WiSE-FT curves, the budget and what was spent, the recommendation
exported with its provenance. `job` is the worker's `SearchJob`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY
from goodfit_cli.data.validation import split_lines
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import sha256_file
from goodfit_cli.io.hf import PRETRAINED_DIR, copy_pretrained
from goodfit_cli.io.runlock import aside_path
from goodfit_cli.objectives import is_rate
from goodfit_cli.report.gate import describe, units_of
from goodfit_cli.report.margin import base_outside, base_outside_test, floor_slack, sizes
from goodfit_cli.report.margin import split_counts
from goodfit_cli.report.front import close_calls, dominance_against, knee_note, pareto_front
from goodfit_cli.report.front import recommend
from goodfit_cli.report.trials import gained, judge, pick, point_name, shipped_name
from goodfit_cli.workflows.budget import Budget
from goodfit_cli.workflows.pruning import at_rung
from goodfit_cli.workflows.rejudge import rerooted, trial_folder

# what each trial chose on validation after training, shown with its knobs: WiSE-FT's α and the
# new classes' logit offset (workflows/offset.py), with finetune.ema the arm or its EMA
CHOSEN = ("wise_alpha", "fisher_beta", "new_offset", "candidate")


def default_curves(rep: dict, prim: dict) -> list[tuple[str, list]]:
    """The WiSE-FT curves (validation, like the trials) of the default arms' finished trials:
    each of the candidate its point was chosen from (with finetune.ema its arm or its
    '<arm>+ema', named '<default> (EMA)' when not the arm)."""
    curves = []
    for r in rep["defaults"]:
        path = Path(r.get("dir") or "") / "report.json"
        if r.get("old") is None or not path.is_file():
            continue
        arms = json.loads(path.read_text())["arms"]
        cand = r.get("candidate") or arms[0]["name"]
        arm = next((a for a in arms if a["name"] == cand), arms[0])
        label = r["name"] if arm is arms[0] else f"{r['name']} (EMA)"  # its '<arm>+ema'
        curves.append((label, [(p["val"]["old"][prim["old"]], p["val"]["new"][prim["new"]])
                               for p in arm.get("wise") or [] if "val" in p]))
    return curves


def study_report(job: Any, study: Any, recipe: Any, dirs: tuple[int, int],
                 notes: list[str], budget: Budget,
                 rechosen: dict[int, dict] | None = None) -> dict[str, Any]:
    """The study's report: every trial judged with this command's gate, the recipe's default
    arms (the trials enqueued first) as the reference points, the budget and what was spent.
    `rechosen`: the trials whose point this command chose again (workflows/rejudge.py), their
    new point in place of the stored one."""
    prim = recipe.primary
    units = units_of(job.gate, recipe.loss_of)  # the messages'
    gate_now = describe(job.gate, units)
    judged_with = study.user_attrs.get("gate")  # in words, with where its limits came from:
    if judged_with is not None and _limits(judged_with) != _limits(gate_now):  # the same limits
        # from a file instead of flags judge every trial the same (rejudge.py chosen_under)
        notes.append(f"the gate changed (was: {judged_with}): every finished trial and the "
                     "recommendation are re-judged on validation; what the old gate decided "
                     "during training stands (a trial pruned at a rung stays pruned, the "
                     "sampler's constraint for the trials run before)")
    if study.user_attrs.get("val_margin", job.margin) != job.margin:
        notes.append(f"the validation margin changed (was {study.user_attrs['val_margin']:g} "
                     "standard errors): every finished trial is re-judged")
    study.set_user_attr("gate", gate_now)
    study.set_user_attr("val_margin", job.margin)
    trials, seen = [], {}
    study_n = study_counts(job.out, study)  # a trial that stored none (an older goodfit)
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus") or t.user_attrs.get("over_budget") or t.user_attrs.get(
                "requeued"):  # never run (requeued: enqueued again behind a retry)
            continue
        if t.state.name == "WAITING":  # an enqueued default arm not run (--trials reached)
            continue
        attrs = {**t.user_attrs, **(rechosen or {}).get(t.number, {})}
        views = attrs.get("views")
        if t.state.name == "COMPLETE" and views is None:
            raise UserError(f"study {study.study_name!r}: trial {t.number} has no stored "
                            "validation results (made by an older goodfit); it cannot be judged: "
                            "use a new --out or --study")
        vals = attrs.get("values") or (t.values if t.values is not None else (None, None))
        test = pick(views["test"]["metrics"], prim) if views else (None, None)
        n = attrs.get("val_counts") or study_n or (sizes(views["val"]) if views else {})
        state = "INTERRUPTED" if "interrupted" in t.user_attrs else t.state.name
        on_val = (judge(job.gate, views["val"], f"trial {t.number}", job.margin, n or None,
                        units) if views else None)
        on_test = (judge(job.gate, views["test"], f"trial {t.number}", units=units)
                   if views else None)
        trials.append({"number": t.number, "state": state,
                       **({"retry_of": t.user_attrs["retry_of"]} if "retry_of" in t.user_attrs
                          else {}),
                       "arm": t.user_attrs.get("arm", t.params.get("arm", "?")),
                       **({"default": t.user_attrs["default"]} if "default" in t.user_attrs
                          else {}),
                       "base_val": t.user_attrs.get("base_val"),
                       "params": {**t.params, **{k: attrs[k] for k in CHOSEN if k in attrs}},
                       **({"rechosen_from": attrs["rechosen_from"]} if "rechosen_from" in attrs
                          else {}),
                       "old": vals[0], "new": vals[1],
                       "gains": gained((vals[0], vals[1]), t.user_attrs.get("base_val"), dirs),
                       "batches": t.user_attrs.get("batches"),  # trained (its compute)
                       **({"weights_batch": attrs["weights_batch"]}  # a rung's weights kept
                          if "weights_batch" in attrs else {}),
                       **({"pruned": t.user_attrs["pruned"]} if "pruned" in t.user_attrs
                          else {}),
                       **at_rung(t, dirs[1]),  # what the pruner judged a pruned trial by
                       **({"rerun_of": t.user_attrs["rerun_of"]} if "rerun_of" in t.user_attrs
                          else {}),
                       "test_old": test[0], "test_new": test[1],
                       "feasible": bool(on_val) and on_val["passed"],
                       "passes_gate_test": on_test["passed"] if on_test else None,
                       # the limits each split failed, with value and limit (the trial's own
                       # report.json says them too)
                       "violations": on_val["violations"] if on_val else [],
                       "violations_test": on_test["violations"] if on_test else [],
                       "dir": (str(trial_folder(job.out, t.user_attrs["dir"]))
                               if t.user_attrs.get("dir") else None),
                       "seed": t.user_attrs.get("seed"),
                       "checkpoint": rerooted(job.out, t.user_attrs.get("dir"),
                                              attrs.get("checkpoint")),
                       "checkpoint_sha256": attrs.get("checkpoint_sha256")})
        trials[-1]["shipped"] = shipped_name(trials[-1])  # its arm, or '<arm> (EMA)'
        seen[t.number] = n
    done = [t for t in trials if t["state"] == "COMPLETE"]
    refs, retried = [], {t.get("retry_of") for t in trials}
    for t in trials:  # the default arms: trials like the others, judged with this gate
        if "default" not in t or (t["state"] in ("INTERRUPTED", "FAIL")  # (its worker died)
                                  and t["number"] in retried):
            continue  # its retry is the reference
        whole = next((r for r in done if r.get("rerun_of") == t["number"]), None)
        if t["state"] != "COMPLETE" and whole is not None:  # pruned, then re-run whole
            t = {**whole, "default": t["default"]}  # (--reruns): that run is the reference
        ref = {"name": t["default"], "number": t["number"], "dir": t["dir"],
               **({"candidate": t["params"]["candidate"]} if "candidate" in t["params"]
                  else {}),  # finetune.ema: the arm or its '<arm>+ema', its point's
               "old": t["old"], "new": t["new"], "test_old": t["test_old"],
               "test_new": t["test_new"],
               "gate": (t["feasible"] if t["state"] == "COMPLETE" and job.gate else None),
               "violations": t["violations"] if t["state"] == "COMPLETE" else []}
        if t["state"] != "COMPLETE":  # pruned at a rung (or diverged): its last rung point
            ref["state"] = t.get("pruned") or t["state"]
            if "rung" in t:
                ref["rung"], ref["rung_new"] = t["rung"], t["rung_new"]
        refs.append(ref)
    b = next((t["base_val"] for t in trials if t.get("base_val")), None)  # the base itself
    base = dict(zip(("old", "new"), b)) if b else None
    spent_b = sum(t["batches"] or 0 for t in trials)
    rec = recommend(done, dirs, job.rule)
    knee = knee_note(job.rule, done, dirs)
    notes += [knee] if knee else []
    n_val = (seen.get(rec["number"]) or {}) if rec is not None else {}  # validation samples
    n_new = n_val.get("new") if is_rate(prim["new"]) else None
    rep = {"study": study.study_name, "storage": study.user_attrs.get("storage"),
           KEY: study.user_attrs.get(KEY),  # the code its trials ran (study.py checks it)
           "recipe": recipe.name, "base": str(job.base.resolve()),
           "metrics": [prim["old"], prim["new"]], "units": recipe.units,  # text only
           "gate": gate_now, "split": "val", "val_margin": job.margin, "notes": notes,
           "new_offset": job.new_offset, "offset_with_alpha": job.new_offset and job.with_alpha,
           "fisher": job.fisher,
           "trials": trials,
           "complete": len(done), "rule": str(job.rule),
           "pruned": sum("pruned" in t for t in trials),
           "reruns": sum("rerun_of" in t for t in trials),  # of the complete ones (--reruns)
           "interrupted": sum(t["state"] == "INTERRUPTED" for t in trials),  # run again
           "batches": spent_b,
           "front": pareto_front([t for t in done if t["feasible"]], dirs),
           "budget": {"finetunes": job.budget, "batches": budget.batches,
                      "steps_per_finetune": budget.steps, "spent_batches": spent_b,
                      "spent_finetunes": round(spent_b / budget.steps, 4)},
           "defaults": refs, "base_point": base, "recommendation": rec,
           "close_calls": close_calls(rec, done, n_new),
           "floor_slack": floor_slack(job.gate, prim["old"], (rec or {}).get("old"),
                                      n_val.get("old")),
           "against_defaults": dominance_against(
               rec, [r for r in refs if r["old"] is not None and r["number"] != rec["number"]],
               dirs) if rec else {}}
    if job.gate is None:
        notes.append("no gate: the rule picks among every trial that gains on the new task, "
                     "whatever it broke")
    run = first_json(trials, "run.json")  # every trial measures one base on the same splits
    notes += run_notes(run)
    outside = base_note(run, job, {prim["old"]: base["old"]} if base else None, units)
    if outside:  # nothing passes on validation unless it beats the base there
        notes.append(outside["message"])
        rep["base_outside_gate"] = outside["limits"]
    base_test = first_json(trials, "base/metrics.json").get("metrics") or {}
    if base and base_test:  # the base's test numbers, beside its validation ones
        base["test_old"] = (base_test.get("old") or {}).get(prim["old"])
        base["test_new"] = (base_test.get("new") or {}).get(prim["new"])
    outside_test = base_outside_test(job.gate, base_test,
                                     split_counts(run.get("validation"), "test"), units)
    if outside_test:  # reported only
        notes.append(outside_test["message"])
    rep["time"] = trial_time(trials)
    if rec is not None:
        rep.update(export(job, study, rec, notes))
    else:
        withdrawn = withdraw(job.out)
        if withdrawn:
            notes.append(f"nothing is recommended now: the earlier recommendation was moved "
                         f"from {job.out / 'recommended'} to {withdrawn}")
    return rep


def _limits(described: str) -> str:
    """A gate's limits from its words (report/gate.py describe), without where they came
    from and without the thresholds' readings in % or pts and their units ('max 7.9 m'): a
    study's older words lack them."""
    words = re.sub(r" \(-?[\d.]+ (pts|%|% of the base)\)", "", described.rsplit(" (from ", 1)[0])
    return re.sub(r"( (?:max|min|max_drop|min_gain) -?[\d.e+-]+) [^\s;()]+(?=;|$| \()", r"\1",
                  words)


def _exported(dest: Path, study: str, number: int, src_sha: str, tensors: dict) -> bool:
    """Whether `dest` already holds this recommendation: the same study's same trial, from a
    checkpoint with the same sha256, and its tensors those `tensors` (checked, not trusted): a
    re-run that recommends it again then writes nothing."""
    if not dest.is_file():
        return False
    try:
        have, meta = ckpt.load_model(dest)
    except UserError:
        return False
    made = meta.get("search") or {}
    return ((made.get("study"), made.get("trial"), made.get("source_sha256"))
            == (study, number, src_sha) and have.keys() == tensors.keys()
            and all(torch.equal(have[k], tensors[k]) for k in tensors))


def withdraw(out: Path) -> Path | None:
    """An earlier recommendation (RUN/recommended, from a run under another gate or rule)
    moved aside when nothing is recommended now, so that nothing downstream ships it: kept,
    under RUN/recommended.prev-<time>; None when there was none."""
    folder = out / "recommended"
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    aside = aside_path(folder)
    folder.rename(aside)
    return aside


def trial_time(trials: list[dict]) -> dict:
    """Where the study's time went: each phase summed over the trials' own timings.json
    (their fine-tune; a WiSE-FT point's evaluation in its wise/ folder as `wise point`), for
    the trials whose folders are on this machine."""
    phases: dict[str, float] = {}
    timed = 0
    for t in trials:
        folder = Path(t.get("dir") or "")
        if not t.get("dir") or not (folder / "timings.json").is_file():
            continue
        timed += 1
        for rel, rename in (("timings.json", None), ("wise/timings.json", "wise point")):
            try:
                rec = json.loads((folder / rel).read_text())
            except (OSError, ValueError):
                continue
            parts = {**rec.get("phases_s", {}), "other": rec.get("other_s", 0.0)}
            if rename:
                parts = {rename: sum(parts.values())}
            for k, v in parts.items():
                phases[k] = round(phases.get(k, 0.0) + v, 3)
    return {"trials": timed, "phases_s": phases}


def study_counts(out: Path, study: Any) -> dict[str, int]:
    """Each task's validation sample count from the first trial folder's run.json (every trial
    measures the same splits; report/margin.py split_counts); {} when none is on this machine."""
    for t in study.get_trials(deepcopy=False):
        folder = trial_folder(out, t.user_attrs.get("dir"))
        if folder is not None and (folder / "run.json").is_file():
            return split_counts(json.loads((folder / "run.json").read_text()).get("validation"))
    return {}


def first_json(trials: list[dict], rel: str) -> dict:
    """The JSON file `rel` of the first trial folder that has one ({} if none): every trial
    measures the same base on the same splits, so its run.json and base/metrics.json speak for
    all."""
    for t in trials:
        path = Path(t.get("dir") or "") / rel
        if t.get("dir") and path.is_file():
            return json.loads(path.read_text())
    return {}


def run_notes(run: dict) -> list[str]:
    """What a trial's run.json said of the splits every choice is made on: the base's
    validation-test gap (report/splits.py) and the validation splits' thin classes
    (data/validation.py)."""
    gap = (run.get("validation_gap") or {}).get("message")
    thin = [n for k, v in (run.get("validation") or {}).items() for n in split_lines(k, v)]
    return [n for n in (gap, *thin) if n]


def base_note(run: dict, job: Any, base_old: dict | None,
              units: dict | None = None) -> dict | None:
    """Whether the base itself ({metric: value}: its old-task validation reading) fails the
    gate judged now (a re-judged study's may have changed) on validation, read with the
    study's margin and the validation sample counts `run` (a trial's run.json) recorded
    (report/margin.py base_outside)."""
    if not base_old:
        return None
    return base_outside(job.gate, {"old": base_old}, job.margin,
                        split_counts(run.get("validation")), units=units)


def export(job: Any, study: Any, rec: dict, notes: list[str]) -> dict[str, str]:
    """The recommendation as RUN/recommended/model.safetensors, with its provenance; where an
    earlier one was moved to make room, said in `notes`."""
    src = Path(rec["checkpoint"] or "")
    if not src.is_file():
        return {"export_note": f"{src} is not on this machine (another worker's trial)"}
    src_sha = sha256_file(src)
    if rec.get("checkpoint_sha256") not in (None, src_sha):  # recorded when it was measured
        raise UserError(f"{src}: not the checkpoint trial {rec['number']} was measured with (its "
                        f"sha256 {src_sha[:12]}…, recorded {rec['checkpoint_sha256'][:12]}…); the "
                        "study folder was changed after the trial: restore it, or start a new "
                        "--out")
    dest = job.out / "recommended" / "model.safetensors"
    tensors, meta = ckpt.load_model(src)
    if not _exported(dest, study.study_name, rec["number"], src_sha, tensors):  # else: there
        meta = {**meta, "search": {"study": study.study_name, "trial": rec["number"],
                                   "arm": point_name(rec), "knobs": rec["params"],
                                   "seed": rec["seed"], "source": str(src),
                                   "source_sha256": src_sha, "pid": os.getpid()}}
        meta.pop("format", None)
        aside = withdraw(job.out)  # another recommendation before: kept aside whole (its
        if aside:  # eval JSON, its model folder), nothing of it beside this one
            notes.append(f"the earlier recommendation was moved from {job.out / 'recommended'}"
                         f" to {aside}: {dest} is trial {rec['number']}'s")
        dest.parent.mkdir(exist_ok=True)
        ckpt.save_model(dest, tensors, meta)
    if (src.parent / PRETRAINED_DIR).is_dir():  # a transformers model: its folder too
        if not _same_files(src.parent / PRETRAINED_DIR, dest.parent / PRETRAINED_DIR):
            copy_pretrained(src.parent / PRETRAINED_DIR, dest.parent / PRETRAINED_DIR)
        return {"exported": str(dest), "exported_folder": str(dest.parent / PRETRAINED_DIR)}
    return {"exported": str(dest)}


def _same_files(src: Path, dest: Path) -> bool:
    """Whether folder `dest` holds exactly `src`'s files, byte for byte."""
    if not dest.is_dir():
        return False
    names = sorted(p.name for p in src.iterdir())
    return names == sorted(p.name for p in dest.iterdir()) and all(
        (src / n).is_file() and (src / n).read_bytes() == (dest / n).read_bytes() for n in names)
