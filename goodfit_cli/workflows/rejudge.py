"""A study re-judged under another gate: each finished trial's point chosen again.

A trial's candidate is not only judged with the gate: it is chosen with it. Its WiSE-FT α is
the best point of its curve the gate allows on validation (report/trials.py `best_alpha`), and
its new-class offset τ the best shift that passes the gate there (workflows/offset.py). So a
re-run of `goodfit search` with another gate (or validation margin) chooses each finished
trial's point again, on validation, from what the trial stored: the α from its fine-tune's
report.json (the curve's validation numbers; no evaluation); the point's own numbers, when the
choice moved or an offset is searched, by `goodfit wise` of the trial's arm at that α into
RUN/trials/trial-NNNN/wise-<key> (evaluations only, no training; <key> names the gate and
margin, and a folder made before for the same choice is reused once its files check out). The
training itself is what the trial's own gate left it: a trial pruned at a rung stays pruned,
and the sampler's constraints for the trials run before keep the old gate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.atomic import atomic_write, sha256_file
from goodfit_cli.report.gate import Gate
from goodfit_cli.report.margin import DEFAULT_Z
from goodfit_cli.report.trials import best_candidate, ema_label
from goodfit_cli.trainer.session import Place
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.training import arm_dirname
from goodfit_cli.workflows.wise import WiseJob, wise


def trial_folder(out: Path, recorded: str | None) -> Path | None:
    """A trial's folder, resolved against the study's own run folder: RUN/trials/<its name>
    when RUN holds it (a study folder copied or moved keeps working from its own trials), else
    the path the study recorded (another worker's folder on a shared disk)."""
    if not recorded:
        return None
    path = Path(recorded)
    own = out / "trials" / path.name
    return own if own.is_dir() else path


def rerooted(out: Path, recorded_dir: str | None, path: str | None) -> str | None:
    """A path the study recorded inside a trial's folder (its checkpoint), resolved as
    `trial_folder` resolves the folder."""
    if not path or not recorded_dir:
        return path
    folder = trial_folder(out, recorded_dir)
    try:
        return str(folder / Path(path).relative_to(recorded_dir))
    except ValueError:  # not inside it
        return path


def chosen_under(gate: Gate | None, margin: float) -> dict[str, Any]:
    """What a trial's point was chosen under: the gate's limits (not where they came from: the
    same limits from a file or from flags choose the same point) and the validation margin."""
    limits = "; ".join(l.name for l in gate.limits) if gate is not None and gate.limits else ""
    return {"limits": limits, "margin": float(margin)}


def _key(under: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(under, sort_keys=True).encode()).hexdigest()[:10]


def views_of(arm: dict) -> dict[str, dict]:
    """A report's arm (or point) as the study stores it: its validation and test views."""
    return {"val": {k: arm["validation"][k] for k in ("metrics", "delta", "flips")},
            "test": {k: arm[k] for k in ("metrics", "delta", "flips")}}


def _reusable(dest: Path, under: dict[str, Any], alpha: float, source_sha: str) -> dict | None:
    """The report of a point made before into `dest` for this very choice (same gate and
    margin, α, and the arm's checkpoint as it is now), its checkpoint matching its summary
    ({} when that choice was the arm itself, α = 1 with no offset: nothing written but the
    record); None otherwise (it is made again)."""
    try:
        record = json.loads((dest / "chosen.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or {k: v for k, v in record.items()
                                        if k not in ("arm_itself", "made_alpha")} \
            != {**under, "alpha": alpha, "wise_of_sha256": source_sha}:
        return None
    if record.get("arm_itself"):
        return {}
    try:
        rep = json.loads((dest / "report.json").read_text())
        summary = json.loads((dest / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if ((rep.get("provenance") or {}).get("wise_alpha") != record.get("made_alpha", alpha)
            or summary.get("sha256") != sha256_file(dest / "model.safetensors")):
        return None
    return rep


def rechoose(trial: Any, folder: Path, prior: dict[str, Any], gate: Gate | None,
             margin: float, dirs: tuple[int, int], new_offset: bool, place: Place,
             ui: Ui, with_alpha: bool = False, fisher: bool = False) -> dict | None:
    """The finished `trial`'s point (its folder: `folder`) chosen again under `gate` and
    `margin` when it was chosen under something else (its own record, or `prior` for a trial
    that has none): {"views", "values" (the objectives on validation), "wise_alpha",
    "new_offset" (with `new_offset`), "fisher_beta" (with `fisher`), "candidate" (with
    finetune.ema: the arm or its '<arm>+ema'), "checkpoint", "rechosen_from"}; None when
    nothing differs (the stored point stands)."""
    under = chosen_under(gate, margin)
    was = trial.user_attrs.get("chosen_under") or prior
    if was == under:
        return None
    rep = json.loads((folder / "report.json").read_text())  # the trial's fine-tune
    prim = (rep["tasks"]["old"]["primary"], rep["tasks"]["new"]["primary"])
    k, alpha = best_candidate(gate, rep, dirs, margin)  # the arm, or its '<arm>+ema'
    passed, alpha = alpha is not None, 1.0 if alpha is None else alpha
    cand = rep["arms"][k]["name"]
    arm_dir = folder / arm_dirname(cand)
    if not (arm_dir / "model.safetensors").is_file():  # its point is chosen from it
        raise UserError(f"{arm_dir / 'model.safetensors'}: not found, the checkpoint trial "
                        f"{trial.number} was trained into; the study folder was changed after "
                        "the trial: restore it, or start a new --out")
    stored = trial.user_attrs.get("wise_alpha", 1.0)
    was_cand = trial.user_attrs.get("candidate", cand if len(rep["arms"]) < 2 else None)
    if alpha == stored and not (new_offset or fisher) and cand == was_cand:  # they stand
        return None
    point, checkpoint, tau, beta = rep["arms"][k], arm_dir / "model.safetensors", 0.0, 0.0
    if alpha < 1.0 or new_offset or fisher:
        dest = folder / f"wise-{_key(under)}"
        source_sha = sha256_file(arm_dir / "model.safetensors")
        made = _reusable(dest, under, alpha, source_sha)
        if made is None:
            of = ema_label(trial.user_attrs.get("arm", ""), cand) if k else ""
            ui.log(f"trial {trial.number}: choosing its point again under this gate "
                   f"(wise_alpha={alpha:g}{' of ' + of if of else ''}; evaluations only) "
                   f"into {dest}")
            grid = tuple(w["alpha"] for w in rep["arms"][k].get("wise") or [])
            made = wise(WiseJob(arm_dir, alpha, dest, None, gate, overwrite=True, in_place=True,
                                new_offset=new_offset, margin=margin, only_if_new=True,
                                alphas=grid if with_alpha else None, alpha_passed=passed,
                                fisher=fisher),
                        place, ui)
            dest.mkdir(exist_ok=True)  # {} (the arm itself): the record alone
            atomic_write(dest / "chosen.json", json.dumps(
                {**under, "alpha": alpha, "wise_of_sha256": source_sha,
                 "arm_itself": not made, **({"made_alpha": made["provenance"]["wise_alpha"]}
                                            if made else {})}, sort_keys=True) + "\n")
        if made:  # {}: the arm itself (α = 1, no offset)
            point, checkpoint = made["arms"][0], dest / "model.safetensors"
            alpha = made["provenance"]["wise_alpha"]  # moved when chosen with the offset
            tau = (made["provenance"].get("new_offset") or {}).get("tau", 0.0)
            beta = (made["provenance"].get("fisher") or {}).get("beta", 0.0)
    views = views_of(point)
    val = views["val"]["metrics"]
    return {"views": views, "values": (val["old"][prim[0]], val["new"][prim[1]]),
            "wise_alpha": alpha, **({"new_offset": tau} if new_offset else {}),
            **({"fisher_beta": beta} if fisher else {}),
            **({"candidate": cand} if len(rep["arms"]) > 1 else {}),
            "checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": sha256_file(checkpoint),
            "rechosen_from": {"wise_alpha": stored,
                              **({"candidate": was_cand} if len(rep["arms"]) > 1 else {}),
                              **({"new_offset": trial.user_attrs.get("new_offset", 0.0)}
                                 if new_offset else {}),
                              **({"fisher_beta": trial.user_attrs.get("fisher_beta", 0.0)}
                                 if fisher else {})}}


def rechosen_all(job: Any, study: Any, dirs: tuple[int, int], place: Place, ui: Ui,
                 notes: list[str]) -> dict[int, dict]:
    """Each finished trial's point chosen again (`rechoose`) when the gate or margin of this
    command's `job` (a SearchJob) is not the one it was chosen under: {trial number: the new
    point}; what was done is said in `notes`. A trial that ended with a rung's weights
    (pruning.py PruneWatch.settle) keeps them: its α and offset are chosen again on them."""
    prior = study.user_attrs.get("chosen_under_before")  # what a trial without a record (an
    if prior is None:  # older goodfit) was chosen under: the study's gate when first re-judged
        prior = chosen_under(None, DEFAULT_Z)
        if "gate" in study.user_attrs:  # its limits in words
            was = study.user_attrs["gate"]
            prior = {"limits": "" if was == "no gate" else was.rsplit(" (from ", 1)[0],
                     "margin": float(study.user_attrs.get("val_margin", DEFAULT_Z))}
        study.set_user_attr("chosen_under_before", prior)
    out, away = {}, []
    under = chosen_under(job.gate, job.margin)
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "COMPLETE" or (t.user_attrs.get("chosen_under") or prior) == under:
            continue
        folder = trial_folder(job.out, t.user_attrs.get("dir"))
        if folder is None or not (folder / "report.json").is_file():
            away.append(t.number)  # another worker's machine: its stored point is judged
            continue
        point = rechoose(t, folder, prior, job.gate, job.margin, dirs, job.new_offset, place,
                         ui, job.with_alpha, job.fisher)
        if point is not None:
            out[t.number] = point
    if away:
        notes.append(f"trial{'s' if len(away) > 1 else ''} {', '.join(map(str, away))}: "
                     "not on this machine, so the point chosen under its own gate is judged "
                     "(run the same command where its folder is to choose it again)")
    moved = sorted(n for n, p in out.items()
                   if any(p[k] != v for k, v in p["rechosen_from"].items()))
    if out:
        notes.append(f"{len(out)} finished trial{'s were' if len(out) > 1 else ' was'} "
                     "chosen under another gate or margin: each one's WiSE-FT α"
                     + (" and new-class offset" if job.new_offset else "")
                     + (" and Fisher weighting" if job.fisher else "")
                     + " chosen again on validation under this one (evaluations only; a "
                     "trial's weights, a rung's or its end's, stay as first chosen)"
                     + (f"; the point moved for trial {', '.join(map(str, moved))}" if moved
                        else "; no point moved"))
    return out
