"""`goodfit compare`: turn checkpoints or run directories into one gated regression report.

A side (the base or a candidate) is a `.safetensors` checkpoint, an arm or pretrain directory
(model.safetensors + summary.json + predictions.safetensors), or a fine-tuning run directory
(run.json): as BASE it stands for its base model, as a CANDIDATE for each of its arms; or a
model folder (a timm or transformers folder: its config.json feeds it its mean/std, and as BASE
its input size and crop are taken as finetune takes them, workflows/compare_sides.py). Stored
metrics and predictions are reused when the checkpoint's sha256 matches the one recorded beside
them and the predictions (and training curve) match the sha256 recorded with them; otherwise the
checkpoint is evaluated on the recipe's test splits, and the log says why.

A base with fewer head rows than the recipe's model (the update adds classes) is measured as
`finetune` measures it: its rows loaded into the grown head, the new rows masked out, so it is
scored with its own head; the report and its provenance (`base_head`) say so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from goodfit_cli.core.distributed import is_main
from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY
from goodfit_cli.core.timing import Phases
from goodfit_cli.data.inputs import ATTR, recorded, spec_of
from goodfit_cli.io.atomic import sha256_file, write_json
from goodfit_cli.io.outputs import check_outputs
from goodfit_cli.io.rundir import (
    check_stored_metrics,
    held_arm,
    load_predictions,
    read_jsonl,
)
from goodfit_cli.io.runlock import Rerun, command_digest, held, open_run
from goodfit_cli.models import build_model, own_head
from goodfit_cli.models.base import arg_defaults, args_as_built
from goodfit_cli.objectives import recomputed
from goodfit_cli.recipe import Recipe
from goodfit_cli.report import RunSide
from goodfit_cli.report.gate import Gate, units_of
from goodfit_cli.report.margin import base_against_gate
from goodfit_cli.report.splits import carved_elsewhere, validation_gap
from goodfit_cli.trainer.measured import base_key, measure_base, measured_ons
from goodfit_cli.trainer.runcheck import check_moved_data, run_data_moved
from goodfit_cli.trainer.session import (
    LABELLED_DATASETS,
    Place,
    adopt_base_inputs,
    load_checkpoint,
    open_session,
    task_kinds,
)
from goodfit_cli.trainer.stage import Ui
from goodfit_cli.workflows.compare_sides import Side, check_classes, widest_classes
from goodfit_cli.workflows.compare_sides import recorded as _recorded
from goodfit_cli.workflows.compare_sides import sides_of as _sides
from goodfit_cli.workflows.reporting import (base_head_record, class_names, finish_report,
                                              lineage)

WRITES = frozenset({"report.json", "report.md", "report.html", "timings.json"})  # into --out


def _provenance(side: Side) -> dict:
    """What a candidate's own files record about it, as finetune's report shows an arm: its
    summary.json when that is this checkpoint's (the sha256 matches), with its run identity's
    base, recipe, goodfit version and source hash; {} for a bare checkpoint or a record of
    another one. Its recorded numbers are left out: compare measures its own, maybe on other
    data."""
    rec = _recorded(side)
    if side.stored is None or side.stored.name != "summary.json" or not side.sha256 \
            or rec.get("sha256") != side.sha256:
        return {}
    ident = _recorded(Side(side.name, side.checkpoint, side.stored.parent / "identity.json"))
    recipe = ident.get("recipe")
    extra = {"base_sha256": ident.get("base_sha256"), "goodfit_version": ident.get(
        "goodfit_version"), KEY: ident.get(KEY),  # the code that trained it (newer runs)
        "recipe": recipe.get("name") if isinstance(recipe, dict) else None}
    kept = {k: v for k, v in rec.items() if k not in ("metrics", "val_metrics")}
    if "checkpoint" in kept:  # where it was read (before: where its run wrote it, moved since)
        kept["checkpoint"] = str(side.checkpoint.resolve())
    return {**kept, **{k: v for k, v in extra.items() if v is not None and k not in kept}}


def _other_model(side: Side, want: dict) -> str | None:
    """How the model a side's own run recorded (its identity.json, when its summary.json is this
    checkpoint's) differs from the recipe's `want` ({"name", "args"}): "activation 'relu' in
    its run, 'gelu' in the recipe"; None when it records none or the same. The args count as
    built (`args_as_built`): an arg one of them leaves out is its builder's default there, so
    `activation: relu` matches an omitted one (relu by default) and `gelu` against an omitted
    one is named (before: args only one of them gave were skipped). A shape a difference
    changes is refused at loading."""
    if not _provenance(side):
        return None
    ident = _recorded(Side(side.name, side.checkpoint, side.stored.parent / "identity.json"))
    recipe = ident.get("recipe")
    model = recipe.get("model") if isinstance(recipe, dict) else None
    if not isinstance(model, dict):
        return None
    if model.get("name") != want["name"]:
        return f"model {model.get('name')!r} in its run, {want['name']!r} in the recipe"
    have = model.get("args") if isinstance(model.get("args"), dict) else {}
    name, defaults = want["name"], arg_defaults(want["name"])
    built = args_as_built(name, have), args_as_built(name, want["args"])

    def shown(args: dict, k: str) -> str:
        return repr(args[k]) if k in args else f"{defaults.get(k)!r} (its default)"

    def spelled(args: dict, k: str) -> str | None:  # None: left at its default
        return json.dumps(args[k], sort_keys=True, default=repr) if k in args else None

    diff = [f"{k} {shown(have, k)} in its run, {shown(want['args'], k)} in the recipe"
            for k in sorted(set(built[0]) | set(built[1]))
            if spelled(built[0], k) != spelled(built[1], k)]
    return ", ".join(diff) or None


def _unchanged(side: Side, name: str) -> bool:
    """Whether the file `name` beside the side's record still has the sha256 recorded for it."""
    path = side.stored.parent / name
    files = _recorded(side).get("files_sha256")
    want = files.get(name) if isinstance(files, dict) else None
    return bool(want) and path.is_file() and sha256_file(path) == want


def _reuse(side: Side, sha256: str, on: tuple[str, ...] | None,
           log) -> tuple[dict, dict] | None:
    """Stored (metrics, predictions, val metrics, val predictions) when they belong to exactly
    this checkpoint, were measured on what this command measures on (`on`: the splits'
    contents, the inputs fed, the objectives; trainer/measured.py `measured_on`) and the
    predictions files are the ones recorded with them."""
    meta = _recorded(side)
    if meta.get("sha256") != sha256 or not isinstance(meta.get("metrics"), dict):
        return None
    if on is None or meta.get("measured_on") not in on:  # `measured_ons`
        log(f"{side.name}: the measurements stored in {side.stored} were not made on this "
            "recipe's data, inputs and objectives (or do not say what they were made on); "
            "evaluating again")
        return None
    if not _unchanged(side, "predictions.safetensors"):
        log(f"{side.name}: {side.stored.parent / 'predictions.safetensors'} does not match the "
            f"sha256 recorded in {side.stored.name} (changed, missing or never recorded); "
            "evaluating again")
        return None
    preds = load_predictions(side.stored.parent / "predictions.safetensors")
    if not preds:
        return None
    check_stored_metrics(side.stored, meta["metrics"], preds, again=recomputed)
    if not isinstance(meta.get("val_metrics"), dict) or not _unchanged(
            side, "val_predictions.safetensors"):
        log(f"{side.name}: no validation measurements recorded with it (or their predictions "
            "changed); evaluating again")
        return None
    val_preds = load_predictions(side.stored.parent / "val_predictions.safetensors")
    check_stored_metrics(side.stored, meta["val_metrics"], val_preds, "validation",
                         recomputed)  # the choices rest on these
    return meta["metrics"], preds, meta["val_metrics"], val_preds


def _misfit(side: Side, changes: list[dict], messages: list[str], grown_ok: bool) -> str | None:
    """Why a checkpoint does not fit the recipe's model for compare (one line); None if it does.

    Only the base may have a head with other row counts (`grown_ok`, a classification update):
    it is then measured with its own rows, as finetune does. Anything else is refused, named as
    a mismatch (compare re-initialises nothing)."""
    head = {c["message"] for c in changes}
    for c in changes:
        if grown_ok and c["action"] == "kept_rows":
            continue
        have, want = c["checkpoint_shape"], c["model_shape"]
        if c["action"] == "ignored":
            why = f"head tensor {c['tensor']} is in the checkpoint but not in the recipe's model"
        elif have is None:
            why = f"head tensor {c['tensor']} is not in the checkpoint"
        else:
            why = (f"head tensor {c['tensor']} has shape {tuple(have)} in the checkpoint but "
                   f"{tuple(want)} in the recipe's model")
            if c["action"] == "kept_rows":
                why += "; only the base may have another number of classes"
        break
    else:
        other = [m for m in messages if m not in head]
        if not other:
            return None
        why = other[0]
    return (f"{side.checkpoint}: does not fit the recipe's model ({why}); compare needs checkpoints "
            "of the recipe's architecture")


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
    again = Rerun(command_digest("compare", recipe.sha256, base.resolve(),
                                 [c.resolve() for c in candidates], gate, junit and
                                 junit.resolve(), place), WRITES)  # killed: the same runs again
    lock, moved = open_run(out, overwrite=overwrite, resume=False, resume_hint="", rerun=again)
    if moved is not None:
        ui.log(f"--overwrite: the previous content of {out} was moved to {moved} (kept)")
    with held(lock, ui.log):
        return _compare(recipe, base, candidates, out, (gate, junit, place), ui)


def _compare(recipe: Recipe, base: Path, candidates: list[Path], out: Path,
             options: tuple[Gate | None, Path | None, Place | None], ui: Ui) -> dict[str, Any]:
    gate, junit, place = options
    t0 = time.perf_counter()
    phases = Phases()  # where the command's time goes (OUT/timings.json, the report)
    base_side = _sides(base, as_base=True, log=ui.log)[0]  # a base moved with its run: said
    cands = [s for c in candidates for s in _sides(c, as_base=False)]
    names = [c.name for c in cands]
    for i, c in enumerate(cands):  # distinct names for the report
        if names.count(c.name) > 1:
            c.name = f"{c.name}#{i + 1}"
    if recipe.model is None:
        raise UserError(f"{recipe.at('model')}: compare needs the recipe to name its model; use "
                        "the recipe.yaml of a run (it names the model it built)")
    model = build_model(recipe.model.name, recipe.model.args, where=recipe.at("model"))
    grows = task_kinds(recipe).get("new") == "classification"  # as finetune loads its base
    head: dict[str, Any] = {}  # the base's head record, when loading changed it
    fed: dict[str, Any] = {}  # each checkpoint's inputs as fed (its own statistics), by name
    carvings: dict[str, Any] = {}  # the base's record of its validation splits

    if base_side.checkpoint.is_dir():  # a model folder: its input size and crop, as finetune
        for k, v in (adopt_base_inputs(recipe, base_side.checkpoint) or {}).items():  # reads it
            ui.log(f"inputs: {k} {v} from the model folder {base_side.checkpoint}")
    args = recipe.data.args if isinstance(recipe.data.args, dict) else {}
    widest = widest_classes([base_side, *cands])  # a class keeps its row along the updates
    if recipe.data.name in LABELLED_DATASETS and "labels_from" not in args and widest:
        recipe.data.args = {**args, "labels_from": str(widest.resolve())}
        recipe.raw.setdefault("data", {}).setdefault("args", {})["labels_from"] = str(widest)
        ui.log(f"inputs: labels_from {widest} (the class names its checkpoint records)")
    # the data, read even when every measurement is reused: what they are checked against
    moved, had = run_data_moved(recipe, place and place.data_dir, ui.log)  # RUN/recipe.yaml
    place = Place(place.device, place.seed, moved) if place and moved else (
        Place(data_dir=moved) if moved else place)
    session = open_session(recipe, place, join=False)
    check_moved_data(session, had, recipe.source)  # other data there: never measured
    check_classes([base_side, *cands], class_names(session).get("class_names"),
                  recipe.at("data.args.labels_from"))

    def measure(side: Side, as_base: bool = False) -> tuple[dict, dict, dict, dict]:
        if not side.checkpoint.exists():
            if side.expect:  # a run's base, by the path the run recorded
                raise UserError(f"{side.stored}: the base it names, {side.checkpoint}, is not "
                                "found (a relative path is taken relative to the run folder); "
                                "pass the base checkpoint itself as BASE")
            raise UserError(f"checkpoint not found: {side.checkpoint}")
        if hasattr(model, ATTR):  # each checkpoint brings its own input statistics (or none)
            delattr(model, ATTR)
        # the base as finetune and wise load it: renamed by the recipe's key_map (before:
        # refused as missing its tensors, "rename with checkpoint.key_map", which it did)
        key_map = recipe.key_map if as_base else None
        loaded = load_checkpoint(model, side.checkpoint, key_map, grow_rows=as_base and grows,
                                 where=recipe.at("checkpoint.key_map"))
        misfit = _misfit(side, loaded.head_changes, loaded.messages, as_base and grows)
        if misfit:  # the recipe's architecture, or exit 2
            raise UserError(misfit)
        side.sha256, side.started_from = loaded.sha256, loaded.started_from
        if as_base:  # how the base's own run made its validation splits
            carvings["base"] = loaded.validation
        inside = held_arm(side.checkpoint)
        named = [side.arm, _recorded(side).get("name")] if side.stored else []
        wrong = next((n for n in named if n is not None and n != inside), None)
        if inside is not None and wrong is not None:
            raise UserError(f"{side.checkpoint}: holds the weights of arm {inside!r} "
                            f"but the run names it {wrong!r} (folders swapped or renamed?); the "
                            "run folder was changed after the run")
        if side.expect and side.expect != loaded.sha256:
            raise UserError(f"{side.stored}: names {side.checkpoint} as the base, whose sha256 "
                            f"is {loaded.sha256[:12]}…, but the run recorded base "
                            f"{side.expect[:12]}…; "
                            "the run folder was changed or the base was replaced (pass the base "
                            "checkpoint itself as BASE)")
        evaluated = session.model()
        evaluated.load_state_dict(model.state_dict())
        own = spec_of(model)  # fed as it was trained, unless the recipe sets the statistics
        if own is not None and getattr(spec_of(evaluated), "source", None) != "recipe":
            setattr(evaluated, ATTR, own)
        fed[side.name] = recorded(evaluated) or {"source": "as stored"}
        # a changed head: stored results are the base's own-task ones, not measured this way
        stored = None if loaded.head_changes else _reuse(
            side, loaded.sha256, measured_ons(session, evaluated), ui.log)
        if stored is not None:
            ui.log(f"{side.name}: reusing stored metrics and predictions")
            return stored
        ui.log(f"{side.name}: evaluating {side.checkpoint}")
        with own_head(evaluated, loaded.head_changes) as measured:
            # test (the report's), validation (the verdict's); a base once per command
            key = base_key(session, evaluated, loaded, measured, key_map) if as_base else None
            result = measure_base(session, evaluated, key)
        if loaded.head_changes:
            head.update(base_head_record(loaded.head_changes, measured))
            for msg in loaded.messages:
                ui.log(msg)
            ui.log(f"{side.name} measured with {head['measured_with']}")
        return result

    phases.add("load", time.perf_counter() - phases.start)  # the model built, the data read
    with phases.phase("base_evaluation"):  # its checkpoint's loading counted here
        bm, bp, bv, bvp = measure(base_side, as_base=True)
    base_fed = fed.get(base_side.name)  # before a candidate of the same name replaces it
    # absolute, as finetune's report records its arms: a relative path depends on the cwd
    base_run = RunSide("base", str(base_side.checkpoint.resolve()), bm, bp, val_metrics=bv,
                       val_predictions=bvp)
    arms = []
    for c in cands:
        with phases.phase("evaluations"):
            m, p, v, vp = measure(c)
        curve = read_jsonl(c.checkpoint.parent / "metrics.jsonl") \
            if c.stored and _unchanged(c, "metrics.jsonl") else []
        arms.append(RunSide(c.name, str(c.checkpoint.resolve()), m, p, curve,
                            provenance=_provenance(c),
                            val_metrics=v, val_predictions=vp))
    prov = {"command": "compare", "recipe": recipe.name, "recipe_sha256": recipe.sha256,
            "base_sha256": base_side.sha256, "wall_s": round(time.perf_counter() - t0, 3)}
    prov["validation"] = session.validation
    prov.update(class_names(session))
    prov["input"], prov["inputs"] = base_fed, fed  # each fed as it was trained
    if head:
        prov["base_head"] = head
    sel = (prov.get("validation") or {}).get("old") or {}
    gap = carved_elsewhere(carvings.get("base"), session.validation) or validation_gap(
        bp, bvp, recipe.primary["old"], sel.get("source") == "carved")
    if gap:  # the base did better on validation than on test: choices there are optimistic
        ui.log(gap["message"])
        prov["validation_gap"] = gap
    elsewhere = {c.name: c.started_from for c in cands
                 if c.started_from not in (None, base_side.sha256)}
    later = {c.name: lineage(c.checkpoint).index(base_side.sha256) + 1 for c in cands  # v2, v0
             if c.name in elsewhere and base_side.sha256 in lineage(c.checkpoint)}
    hint = (f" ({base} as BASE stands for the base of that run: give {base}/<arm> to compare "
            "with its fine-tune)" if (base / "run.json").is_file() else "")
    if later:  # an update of an update of this base: its changes since this base, said
        prov["ancestor"] = {"candidates": later, "message": "Updated from this base more than "
                            "once: " + ", ".join(f"{n} ({k} updates since it, its lineage says)"
                                                 for n, k in later.items())
                            + f"; their changes are measured since this base{hint}."}
        ui.log(prov["ancestor"]["message"])
    elsewhere = {n: sha for n, sha in elsewhere.items() if n not in later}
    if elsewhere:  # its Δ and flips are against a model it never started from: said, kept
        prov["other_base"] = {"candidates": elsewhere, "message": (
            "Not fine-tuned from this base: " + ", ".join(
                f"{n} (began from {sha[:12]}…)" for n, sha in elsewhere.items())
            + f"; their changes are measured against {base_side.sha256[:12]}…, which they "
            f"never started from{hint}.")}
        ui.log(prov["other_base"]["message"])
    want = {"name": recipe.model.name, "args": dict(recipe.model.args or {})}
    differs = {s.name: d for s in (base_side, *cands) if (d := _other_model(s, want))}
    if differs:  # weights of the same shapes in another architecture: measured, and said
        prov["other_model"] = {"sides": differs, "message": (
            "Trained as another model than the recipe's, measured here as the recipe's (its "
            "model.args): " + "; ".join(f"{n}: {d}" for n, d in differs.items()) + ".")}
        ui.log(prov["other_model"]["message"])
    against = base_against_gate(gate, (bm, bp, bv, bvp), 0.0,
                                units_of(gate, recipe.loss_of))  # the base itself outside the gate
    if "base_outside_gate" in against:  # on validation: nothing passes unless it does better
        ui.log(against["base_outside_gate"]["message"])
    prov.update(against)
    prov["timings"] = phases.record()  # the report's own time: OUT/timings.json
    try:
        with phases.phase("report"), phases.counting():  # the bootstrap: a phase of its own
            report = finish_report(recipe, out, base_run, arms, task_kinds(recipe), prov, gate,
                                   junit, session.sample_ids)
        now = phases.record()
        write_json(out / "timings.json", now)
        ui.log(phases.line(now))
        return report
    except ValueError as e:  # stored predictions from runs on different test data
        raise UserError(f"cannot compare: {e} (were the runs made with another recipe or data? "
                        "pass checkpoints to evaluate them on this recipe)") from None
