"""The sides of `goodfit compare` (workflows/compare.py): what a BASE or CANDIDATE path stands
for (a checkpoint file, a model folder, an arm or pretrain directory, a fine-tuning run
directory) and the record stored beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from goodfit_cli.core.errors import UserError
from goodfit_cli.io.checkpoint import read_metadata
from goodfit_cli.io.rundir import moved_base, read_json
from goodfit_cli.training import arm_dirname


@dataclass
class Side:
    name: str
    checkpoint: Path
    stored: Path | None = None  # a JSON file with "sha256" and "metrics", beside predictions
    sha256: str | None = None  # of the checkpoint, once read
    expect: str | None = None  # the sha256 the run recorded for it (a run's base)
    started_from: str | None = None  # the base its fine-tune recorded (its metadata), once read
    arm: str | None = None  # the arm a run's run.json names for it


def sides_of(path: Path, as_base: bool, log: Callable[[str], None] = lambda _: None) -> list[Side]:
    if not path.exists():
        raise UserError(f"not found: {path} (give a .safetensors checkpoint or a run directory)")
    if path.is_file():
        d = path.parent
        for meta in (d / "summary.json", d / "metrics.json"):
            if meta.exists():  # named by its folder, and by its record when that differs
                named = recorded(Side("", path, meta)).get("name") \
                    if meta.name == "summary.json" else None
                label = d.name if d.name != "base" else "base"
                return [Side(f"{label} ({named})" if isinstance(named, str) and named
                             and named != label else label, path, meta)]
        folder = d.name if d.name != "hf" else f"{d.parent.name}/hf"  # RUN/<arm>/hf: the arm's
        return [Side(path.stem if path.stem != "model" else folder, path)]
    if (path / "run.json").exists():  # a fine-tuning run directory
        if as_base:
            record = path / "base" / "metrics.json"
            base, ident = read_json(record), read_json(path / "run.json").get("identity")
            expect = (ident.get("base_sha256") if isinstance(ident, dict) else None) \
                or base.get("sha256")
            expect = expect if isinstance(expect, str) else None  # moved with the run: found
            return [Side("base", moved_base(path, base, "checkpoint", expect, log), record,
                         expect=expect)]
        saved = read_json(path / "run.json")
        arms = saved.get("arms")
        if not isinstance(arms, list) or not arms or not all(isinstance(a, str) for a in arms):
            # an empty list too: no candidate, and a gate would pass on nothing (exit 0)
            raise UserError(f"{path / 'run.json'}: no list of arms; the run folder is damaged")
        gone = saved.get("diverged") if isinstance(saved.get("diverged"), dict) else {}
        for a in arms:  # before: "checkpoint not found: RUN/<arm>/model.safetensors"
            if a in gone and not (path / arm_dirname(a) / "model.safetensors").is_file():
                raise UserError(f"{path / 'run.json'}: arm {a!r} diverged ({gone[a]}) and has "
                                "no checkpoint to compare; pass the run's finished arms as "
                                "RUN/<arm>")
        # each arm, and its averaged weights when it kept an EMA (`<arm>+ema`, a candidate of
        # its own in the run's report: one the report names and the folder lacks is missing)
        reported = {a.get("name") for a in (read_json(path / "report.json").get("arms") or [])
                    if isinstance(a, dict)} if (path / "report.json").is_file() else set()
        sides = [Side(n, path / arm_dirname(n) / "model.safetensors",
                      path / arm_dirname(n) / "summary.json", arm=n)
                 for a in arms for n in (a, f"{a}+ema")
                 if n == a or n in reported or (path / arm_dirname(n) / "summary.json").is_file()]
        listed = {s.checkpoint.parent.name for s in sides}
        for d in sorted(p for p in path.iterdir() if p.name not in listed):  # never left out
            if all((d / f).is_file() for f in ("identity.json", "summary.json",
                                               "model.safetensors")):
                raise UserError(f"{d}: a finished arm of this run that {path / 'run.json'} does "
                                "not list (run.json edited?); the run folder was changed after "
                                "the run")
        return sides
    if (path / "model.safetensors").exists():
        record = any((path / f).exists() for f in ("summary.json", "metrics.json"))
        described = any((path / f).exists() for f in ("config.json", "preprocessor_config.json"))
        if described and not record:  # a model folder: read whole, its config.json says how
            return [Side(path.name, path)]  # its inputs are normalised (the file alone: not)
        return sides_of(path / "model.safetensors", as_base)
    raise UserError(f"{path}: not a checkpoint or a goodfit run directory "
                    "(no model.safetensors or run.json)")


def recorded(side: Side) -> dict:
    """The side's stored record (summary.json or base/metrics.json); {} when absent or damaged."""
    try:
        meta = json.loads(side.stored.read_text()) if side.stored else {}
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def recorded_classes(checkpoint: Path) -> list[str]:
    """The class names a goodfit checkpoint records, one per head row; [] when none."""
    names = read_metadata(checkpoint).get("class_names") if checkpoint.is_file() else None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else []


def widest_classes(sides: list[Side]) -> Path | None:
    """The checkpoint whose recorded class names extend every other side's (v2's [bird, cat,
    dog, ant, eel] over v0's [bird, cat, dog]): the data numbered by it measures every side on
    its own rows. None when no side records them; one line when two name a row otherwise."""
    best, widest = None, []
    for s in sides:
        names = recorded_classes(s.checkpoint)
        clash = next((i for i, (a, b) in enumerate(zip(widest, names)) if a != b), None)
        if clash is not None:
            raise UserError(f"{s.checkpoint}: its head row {clash} is class {names[clash]!r} but "
                            f"{best} has {widest[clash]!r} there; they number their classes "
                            "otherwise, so one recipe cannot measure both on their own rows")
        if len(names) > len(widest):
            best, widest = s.checkpoint, names
    return best


def check_classes(sides: list[Side], numbered: list[str] | None, where: str) -> None:
    """One line when the data numbers a class otherwise than a side's checkpoint recorded (a
    recipe's labels_from naming another model): its rows would be read as other classes."""
    for s in sides:
        names = recorded_classes(s.checkpoint)
        clash = next((i for i, (a, b) in enumerate(zip(names, numbered or [])) if a != b), None)
        if clash is not None:
            raise UserError(f"{where}: the data numbers class {clash} {numbered[clash]!r} but "
                            f"{s.checkpoint} was trained with {names[clash]!r} on that head row; "
                            "leave data.args.labels_from unset (compare numbers the classes as "
                            "the checkpoints record them) or name one of them")
