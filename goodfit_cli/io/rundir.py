"""The run directory: its layout, and reading and writing its files atomically.

    RUN/recipe.yaml  run.json  report.{json,md,html}
    RUN/base/metrics.json  predictions.safetensors
    RUN/<arm>/model.safetensors  metrics.jsonl  predictions.safetensors  summary.json
             state-<batch>.safetensors   (the last K resumable states while unfinished)

A pretrain writes the same files as one arm, in its own directory. Nothing here overwrites a
checkpoint: an existing one is renamed aside.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.metrics import sample_mean
from goodfit_cli.io import checkpoint as ckpt
from goodfit_cli.io.atomic import probe_writable, sha256_file, write_json
from goodfit_cli.io.hubdir import resolve_base, weights_sha256
from goodfit_cli.io.runlock import has_content
from goodfit_cli.io.staging import settle

Log = Callable[[str], None]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__}); the run folder is damaged "
                        "(start afresh with --overwrite)") from None


@dataclass
class RunResult:
    name: str
    dir: Path
    metrics: dict[str, dict[str, float]]
    predictions: dict[str, dict[str, torch.Tensor]]
    curve: list[dict] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # "val_metrics": on the val splits
    val_predictions: dict[str, dict[str, torch.Tensor]] | None = None
    # WiSE-FT points of these weights (from the grid's base) measured on validation during the
    # training (a search's rung watch): {α: (metrics, predictions)}, which the grid reuses
    val_curve: dict[float, tuple[dict, dict]] | None = None


def keep_previous(path: Path) -> None:
    """A checkpoint is never clobbered: an existing one is kept aside (`.prev-<time>`).

    It is linked (copied where links are impossible), not renamed: until the new file replaces
    it, `path` still holds the old one, so a failed write (disk full) leaves it where it was.
    """
    if path.exists():
        aside = path.with_name(f"{path.stem}.prev-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
        n = 1
        while aside.exists():
            aside = aside.with_name(f"{path.stem}.prev-{time.strftime('%Y%m%d-%H%M%S')}-{n}{path.suffix}")
            n += 1
        try:
            os.link(path, aside)
        except OSError:
            shutil.copy2(path, aside)


def state_files(out: Path) -> list[Path]:
    """Resumable states of a stage, oldest first."""
    return sorted(out.glob("state-*.safetensors")) if out.is_dir() else []


def remove_stale_temps(out: Path) -> None:
    """Temp files of atomic writes, and staging folders of sets of files (io/staging.py:
    `.staging-<pid>-<hex>`), whose process died (SIGKILL, power loss) before the rename: a
    staging folder whose swap had begun is swapped in to the end (staging.settle)."""
    settle(out)


def tidy(folder: Path, states: bool = False) -> None:
    """A resumed run's folder without what a killed process left: temp files of writes never
    renamed, and (`states`: an arm whose summary was written) its resumable states."""
    remove_stale_temps(folder)
    for f in state_files(folder) if states else []:
        f.unlink(missing_ok=True)


def newest_state(out: Path, log: Log,
                 accept: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """The newest state that loads and that `accept` takes (it restores the state, raising on
    one that does not fit: missing keys, wrong shapes); a damaged newer one (a crash, a bad
    write) is skipped with a warning in favour of the one before it."""
    remove_stale_temps(out)
    for path in reversed(state_files(out)):
        try:
            state = ckpt.load_state(path)
            if accept is not None:
                accept(state)
            return state
        except (UserError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            reason = f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)
            log(f"skipping damaged state {path.name}: {reason[:200]}")
    return None


def prepare_out(out: Path, *, overwrite: bool, resume: bool,
                resume_hint: str = ", or --resume to continue it") -> None:
    """Check and make `out`, written in place (no lock, nothing moved aside): "not empty" as
    open_run judges it, so what a killed process left mid-write (`dead_leftovers`) does not
    count (before: a folder holding only those was refused), and it is removed here."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a directory: {out}")
    if has_content(out) and not (overwrite or resume):
        raise UserError(f"output directory {out} already exists and is not empty "
                        f"(pass --overwrite to write into it{resume_hint})")
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        probe_writable(out)
    except OSError as e:
        raise UserError(f"cannot write to output directory {out}: {e.strerror}") from None


def devices_used(earlier: dict, device: str) -> dict[str, Any]:
    """{"device": device} and, when the run's earlier commands (`earlier`: their run.json, or
    an arm's resumable state) ran on another device, "devices": every device used, in order
    (a resume on another --device: "device" alone would say it all ran on the last one)."""
    was = earlier.get("devices") if isinstance(earlier.get("devices"), list) else [
        earlier.get("device")]
    devices = [d for d in was if isinstance(d, str)]
    devices += [] if device in devices[-1:] else [device]
    return {"device": device, **({"devices": devices} if len(devices) > 1 else {})}


def save_predictions(path: Path, preds: dict[str, dict], split: str = "test") -> None:
    """{"old": {"pred", "target", "per_sample": {metric: (N,)}}, "new": ...} → one safetensors
    (`split`: which splits they are of, "test" or "validation")."""
    flat = {}
    for task, d in preds.items():
        for k, v in d.items():
            if isinstance(v, dict):
                flat.update({f"{task}.{k}.{m}": t for m, t in v.items()})
            else:
                flat[f"{task}.{k}"] = v
    ckpt.save_model(path, flat, {"content": f"per-sample predictions on the {split} splits"})


def load_predictions(path: Path) -> dict[str, dict]:
    preds: dict[str, dict] = {}
    if not path.exists():
        return preds
    tensors, _ = ckpt.load_model(path)
    for key, v in tensors.items():
        task, _, rest = key.partition(".")
        if rest.startswith("per_sample."):
            preds.setdefault(task, {}).setdefault("per_sample", {})[rest[len("per_sample."):]] = v
        else:
            preds.setdefault(task, {})[rest] = v
    return preds


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object goodfit wrote; a missing or damaged one is one UserError line."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found; the run folder is incomplete (run it again, or "
                        "start afresh with --overwrite)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:80]}); the run "
                        "folder is damaged (run it again, or start afresh with --overwrite)"
                        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; the run folder is damaged")
    return data


def recorded_path(folder: Path, value: Any) -> Path:
    """A path a run recorded: absolute as written; a relative one (older runs) is taken
    relative to the run folder that recorded it, never to the current directory."""
    path = Path(str(value or ""))
    return path if path.is_absolute() else folder / path


def beside_run(run: Path, path: str | Path) -> str | None:
    """`path` (absolute) relative to the run folder `run`, as a run records it beside the
    absolute one (a project folder moved or mounted elsewhere with its base, data and runs);
    None when the two are not on one tree (another drive)."""
    here, there = run.resolve(), Path(path)
    return os.path.relpath(there, here) if there.anchor == here.anchor else None


def moved_with_run(run: Path, record: dict[str, Any], key: str,
                   matches: Callable[[Path], bool], log: Log, how: str,
                   name: str | None = None) -> Path:
    """A path a run recorded (`record[key]`, in run.json or base/metrics.json): where it was
    when it still exists there; else, when the run folder was moved or copied together with it,
    the path recorded relative to the run (`<key>_relative`, `beside_run`), taken only when
    `matches` finds there the content the run recorded (`how`: in words), and said in one log
    line (`name`: what it is, `key` by default); else the recorded path (its reader says it is
    not found). Never the current directory's."""
    recorded = recorded_path(run, record.get(key))
    rel = record.get(f"{key}_relative")
    if recorded.exists() or not isinstance(rel, str) or not rel:
        return recorded
    there = Path(os.path.normpath(run.resolve() / rel))
    if there == recorded or not there.exists():
        return recorded
    if not matches(there):
        log(f"{run}: its {name or key} {recorded} is not found, and {there} (where it was "
            "relative to the run) holds other content than the run recorded: not used")
        return recorded
    log(f"{run}: its {name or key} {recorded} is not found; using {there}, where it was "
        f"relative to the run ({how})")
    return there


def moved_base(run: Path, record: dict[str, Any], key: str, expect: Any, log: Log) -> Path:
    """The base a run recorded (`record[key]`), or the one moved with the run (moved_with_run)
    whose weights hash to `expect`, the base_sha256 the run recorded (none: never moved)."""
    def same(path: Path) -> bool:
        try:
            return isinstance(expect, str) and weights_sha256(resolve_base(path)) == expect
        except (UserError, OSError):
            return False
    return moved_with_run(run, record, key, same, log, "its sha256 is the run's base_sha256",
                          "base")


def moved_data_dir(run: Path, saved: dict[str, Any], log: Log) -> Path:
    """The data folder run.json records, or the one moved with the run (moved_with_run) when
    the run recorded its data's hash ("data"): the caller reads it and refuses it unless it
    hashes to that (trainer/runcheck.py); a run that recorded none: never moved."""
    had = saved.get("data")
    checkable = isinstance(had, dict) and isinstance(had.get("sha256"), str) \
        and had["sha256"] != "not checkable"
    return moved_with_run(run, saved, "data_dir", lambda _: checkable, log,
                          "its data is refused unless it hashes to the run's record")


def relocated(result: RunResult) -> RunResult:
    """A finished arm reused where its folder is now: a run folder moved since the arm finished
    keeps the old place in its summary.json, so each path it recorded there (its "checkpoint",
    a transformers model's "pretrained_folder") becomes the file of that name in the arm's
    folder as it is now, absolute as the arm wrote it; summary.json is rewritten when one
    changed (the files whose sha256 it records are not)."""
    recorded = {k: v for k, v in result.summary.items()
                if k in ("checkpoint", "pretrained_folder") and isinstance(v, str) and v}
    moved = {k: str(result.dir.resolve() / Path(v).name) for k, v in recorded.items()}
    if moved != recorded:
        result.summary.update(moved)
        write_json(result.dir / "summary.json", result.summary)
    return result


def note_diverged(run: Path, arm: str, message: str | None) -> None:
    """run.json's "diverged" ({arm: the line its training ended with}): an arm whose training
    loss became NaN or Inf stays named there until it finishes (`message` None), so that a
    resume which leaves it out still says it diverged (the report's provenance)."""
    saved = read_json(run / "run.json")
    had = saved.pop("diverged", None)
    had = had if isinstance(had, dict) else {}
    now = {a: m for a, m in had.items() if a != arm} | ({arm: message} if message else {})
    if now != had:
        write_json(run / "run.json", {**saved, **({"diverged": now} if now else {})})


Again = Callable[[str, torch.Tensor, torch.Tensor], "float | None"]  # objectives.recomputed
HOW = ("compare: copy the checkpoint out of its folder to evaluate it afresh; a resume: start "
       "afresh with --overwrite")


def check_stored_metrics(record: Path, metrics: Any, preds: dict[str, dict],
                         split: str = "", again: Again | None = None) -> None:
    """Refuse a record whose metrics are not what its predictions give.

    Every metric of an objective is the mean of its per-sample values, which the predictions
    file holds (and whose sha256 the record holds), and a registered one that is not (f1,
    balanced accuracy) is computed again from its predictions and targets (`again`:
    objectives.recomputed): a metric edited in the record after the run is one UserError line
    naming both numbers, never a verdict. Per-sample values with NaN may also be a `partial`
    metric's (core.metrics.Metric), whose mean leaves those samples out: either mean matches."""
    if not isinstance(metrics, dict):
        raise UserError(f"{record}: no metrics; the run folder is damaged")
    for task, values in metrics.items():
        per = (preds.get(task) or {}).get("per_sample") or {}
        if not isinstance(values, dict):
            raise UserError(f"{record}: metrics.{task} is not a table of metrics; the run folder "
                            "is damaged")
        if values and not preds.get(task):
            raise UserError(f"{record}: {split}{' ' if split else ''}{task} numbers with no "
                            "predictions to check them against; the record was edited or "
                            f"damaged ({HOW})")
        for name, stored in values.items():
            task_preds = preds.get(task) or {}
            if name in per:
                value = float(per[name].double().mean())
                if math.isnan(value) and isinstance(stored, (int, float)) \
                        and not isinstance(stored, bool) and math.isfinite(stored):
                    value = sample_mean(per[name], partial=True)  # NaN: nothing measured
            elif again is not None and task_preds.get("pred") is not None \
                    and task_preds.get("target") is not None:  # f1, balanced accuracy
                value = again(name, task_preds["pred"], task_preds["target"])
                if value is None:
                    continue
            else:
                continue
            same = (stored is None and not math.isfinite(value)) or (
                isinstance(stored, (int, float)) and not isinstance(stored, bool)
                and math.isclose(float(stored), value, rel_tol=1e-9, abs_tol=1e-12))
            if not same:
                raise UserError(f"{record}: {split}{' ' if split else ''}{task} {name} is "
                                f"recorded as {stored!r} but its predictions give {value:.6g}; "
                                f"the record was edited or damaged ({HOW})")


def held_arm(checkpoint: Path) -> str | None:
    """The arm whose weights a fine-tune's checkpoint holds, as its header records it; None for
    another checkpoint (a WiSE-FT point names the arm it mixes, not itself; a pretrain none)."""
    meta = ckpt.read_metadata(checkpoint) if checkpoint.is_file() else {}
    arm = meta.get("arm") if meta.get("stage") == "finetune" else None
    return arm if isinstance(arm, str) else None


def load_result(arm_dir: Path, again: Again | None = None,
                expect: str | None = None) -> RunResult:
    """A finished arm's folder, every file its numbers rest on checked first (`again`: see
    check_stored_metrics; `expect`: the arm the run expects there)."""
    summary = read_json(arm_dir / "summary.json")
    if not isinstance(summary.get("metrics"), dict) or "name" not in summary:
        raise UserError(f"{arm_dir / 'summary.json'}: no name or metrics; the run folder is "
                        "damaged (start afresh with --overwrite)")
    record = arm_dir / "summary.json"
    if expect is not None and summary["name"] != expect:  # folders swapped with another's
        raise UserError(f"{record}: holds arm {summary['name']!r} where the run expects "
                        f"{expect!r}; the run folder was changed after the run (start afresh "
                        "with --overwrite)")
    recorded = summary.get("files_sha256") or {}
    if not isinstance(recorded, dict) or not isinstance(summary.get("val_metrics") or {}, dict):
        raise UserError(f"{record}: files_sha256 or val_metrics is not a table; the run folder "
                        "is damaged (start afresh with --overwrite)")
    # everything the arm's numbers rest on, its weights first: a file recorded and missing, or
    # not the one recorded, is a folder changed after the run (never reused on faith)
    model = {"model.safetensors": summary["sha256"]} if "sha256" in summary else {}
    needed = ["predictions.safetensors"] + (["val_predictions.safetensors"]
                                            if summary.get("val_metrics") else [])
    unrecorded = [f for f in needed if f not in recorded]
    if unrecorded:  # its numbers could not be checked: never reused on faith
        raise UserError(f"{record}: records no sha256 for {unrecorded[0]}, so its numbers cannot "
                        "be checked; the run folder was changed after the run (start afresh "
                        "with --overwrite)")
    for name, want in {**model, **recorded}.items():
        path = arm_dir / str(name)
        if not path.is_file() or sha256_file(path) != want:
            raise UserError(f"{path}: {'does not match' if path.is_file() else 'missing, not'} "
                            f"the file whose sha256 {record} records; the run folder was changed "
                            "after the run (start afresh with --overwrite)")
    held = held_arm(arm_dir / "model.safetensors")
    if held is not None and held != summary["name"]:  # renamed, or folders swapped
        raise UserError(f"{arm_dir / 'model.safetensors'}: holds the weights of arm {held!r} "
                        f"but {record} names it {summary['name']!r}; the run folder was changed "
                        "after the run (start afresh with --overwrite)")
    preds = load_predictions(arm_dir / "predictions.safetensors")
    val_preds = load_predictions(arm_dir / "val_predictions.safetensors") or None
    check_stored_metrics(record, summary["metrics"], preds, again=again)
    if summary.get("val_metrics"):  # the choices rest on these
        check_stored_metrics(record, summary["val_metrics"], val_preds or {}, "validation", again)
    return RunResult(summary["name"], arm_dir, summary["metrics"], preds,
                     read_jsonl(arm_dir / "metrics.jsonl"), summary, val_preds)


def made_with(checkpoint: Path) -> str:
    """'; D/recipe.yaml is the recipe its run was made with (...)' for a checkpoint of a run's
    folder (pretrain's OUT, a fine-tune's RUN/<arm>: its summary.json beside it), else '': the
    hint of a checkpoint that does not fit the recipe's model (demo --quick's base is smaller
    than the shipped toy recipe's)."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for run in (folder, folder.parent) if (folder / "summary.json").is_file() else (folder,):
        if (run / "recipe.yaml").is_file():
            return (f"; {run / 'recipe.yaml'} is the recipe its run was made with (give it as "
                    "--recipe)")
    return ""
