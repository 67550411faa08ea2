"""What a run is, so that only the same run is ever resumed or reused.

A run's identity is the base checkpoint's sha256, the recipe after overrides, the data it reads
(its splits' contents, hashed), the seed, the arm, the number of processes, goodfit's version
and goodfit's own source, hashed (core/source.py: the code that ran, which the version alone
does not say).
Each arm folder (and a pretrain's folder) records it in `identity.json` before its first state;
a resumable state or a finished arm is reused only when the identity recorded beside it equals
the current one, and otherwise the run stops with one line naming what differs ("RUN was started
from base e731… but --base is fa0c…"). The torch thread count is recorded too, but only warned
about: it changes rounding, not what the run is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from goodfit_cli.core.errors import UserError
from goodfit_cli.core.source import KEY
from goodfit_cli.io.atomic import write_json

IDENTITY = "identity.json"
CHECKED = ("base_sha256", "base_config", "recipe", "data", "seed", "arm", "world_size",
           "goodfit_version", KEY)
CODE_CHANGED = " (the code changed since)"  # how a difference in goodfit's source ends


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256
        return value[:4] + "…"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "…"


def _first_difference(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key whose value differs between two JSON-like trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if k not in old or k not in new:
                return f"{key}{k}", old.get(k, "<absent>"), new.get(k, "<absent>")
            found = _first_difference(old[k], new[k], f"{key}{k}.")
            if found:
                return found
        return None
    return None if old == new else (key.rstrip("."), old, new)


def describe_difference(where: Path, old: dict, new: dict) -> str | None:
    """One clause naming the first part of the identity that differs, or None."""
    for key in CHECKED:
        if old.get(key) == new.get(key):
            continue
        a, b = old.get(key), new.get(key)
        if key == "data" and not (isinstance(a, dict) and isinstance(b, dict)):
            continue  # recorded by an older goodfit (or not given): not checked
        if key == "data":  # the contents of the splits it reads (trainer/runcheck.py)
            return (f"{where} was started on data whose {a.get('of')} hash to "
                    f"{str(a.get('sha256'))[:12]}… but they now hash to "
                    f"{str(b.get('sha256'))[:12]}… (were the data changed since?)")
        if key == KEY and not (isinstance(a, str) and isinstance(b, str)):
            continue  # recorded by an older goodfit (or not given): not checked
        if key == KEY:
            return (f"{where} was started with goodfit source {_short(a)} but it is now "
                    f"{_short(b)}{CODE_CHANGED}")
        if key == "base_sha256":
            return f"{where} was started from base {_short(a)} but --base is {_short(b)}"
        if key == "base_config":  # a transformers model's config (trainer/runcheck.py)
            was = _short(a) if a else "nothing (recorded by an older goodfit)"
            return (f"{where} was started from a base whose config.json hashes to {was} but "
                    f"it now hashes to {_short(b) if b else 'nothing'}")
        if key == "recipe":
            k, x, y = _first_difference(a, b) or ("recipe", a, b)
            return (f"{where} was started with recipe key {k} = {_short(x)} but it is now "
                    f"{_short(y)}")
        label = {"seed": "seed", "arm": "arm", "world_size": "process count",
                 "goodfit_version": "goodfit version"}[key]
        return f"{where} was started with {label} {_short(a)} but it is now {_short(b)}"
    return None


def read_identity(folder: Path) -> dict | None:
    path = folder / IDENTITY
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the run's identity ({e}); the folder is damaged, "
                        "start afresh with --overwrite") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path}: not a run identity (a JSON object); the folder is damaged, "
                        "start afresh with --overwrite")
    return saved


def comparable(ident: dict) -> dict:
    """An identity without what is not the run's identity: where the data folder is (the run
    records it and reads it from there; what a run reuses is checked against its contents) and
    the recipe's list of arms (the run's own list is run.json's; each arm claims its folder)."""
    recipe = ident.get("recipe")
    if not isinstance(recipe, dict):
        return ident
    recipe = {k: v for k, v in recipe.items() if k != "data_dir"}
    if isinstance(recipe.get("finetune"), dict):
        recipe["finetune"] = {k: v for k, v in recipe["finetune"].items() if k != "arms"}
    return {**ident, "recipe": recipe}


def check_identity(where: Path, saved: dict, current: dict, warn: Callable[[str], None]) -> None:
    """Refuse to continue `where` unless its recorded identity is the current one."""
    diff = describe_difference(where, comparable(saved), comparable(current))
    if diff and diff.endswith(CODE_CHANGED):  # no resume with this code
        raise UserError(f"{diff[:-1]}; start afresh with --overwrite, or a new --out)")
    if diff:
        raise UserError(f"{diff}; resume only with the same base, recipe and seed, or start "
                        "afresh with --overwrite")
    if saved.get("torch_threads") != current.get("torch_threads"):
        run = where.parent if (where.parent / "run.json").is_file() else where  # RUN/<arm>: RUN
        said = (f"{run}: started with {saved.get('torch_threads')} torch threads, now "
                f"{current.get('torch_threads')}: the result will not be bit-identical to an "
                "uninterrupted run")
        if said not in _THREADS_SAID:  # once per run folder, not again for each of its arms
            _THREADS_SAID.add(said)
            warn(said)


_THREADS_SAID: set[str] = set()  # the thread-count lines this process has said


def claim(folder: Path, current: dict, has_work: bool, warn: Callable[[str], None],
          continues: bool = False) -> None:
    """Record `current` in a fresh folder, or check it against the folder's record.

    `has_work`: the folder holds states or results that would be reused. `continues`: this
    command trains on in it (a resume that finishes it): the keys of `current` that an older
    goodfit's record lacks (goodfit_source_sha256, ...) are added to it, those it had never
    changed (they were checked), so the record names the code that finished it too."""
    saved = read_identity(folder)
    if saved is None:
        if has_work:
            raise UserError(f"{folder} holds states or results but no {IDENTITY}, so what made "
                            "them cannot be checked; start afresh with --overwrite")
        write_json(folder / IDENTITY, current)
        return
    check_identity(folder, saved, current, warn)
    lacked = {k: v for k, v in current.items() if k not in saved}
    if continues and lacked:
        write_json(folder / IDENTITY, {**saved, **lacked})
